"""The encode stage's settings (``params.yaml`` group ``encode``)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import ParamsError, load_settings, setting
from pipeline.encode.buckets import MODES, check_frame_buckets
from pipeline.models.profiles import Profile

INTERPOLATIONS = ("area", "bicubic", "lanczos", "bilinear")
DTYPES = ("bfloat16", "float16", "float32")
# encode.target_fps in words: the profile's native rate (also null, the default), or the clip's own rate
FPS_WORDS = ("native", "source")


@dataclass(frozen=True)
class EncodeConfig:
    cache_dir: str | None = None  # the cache store; None: <data>/cache
    frame_buckets: tuple[int, ...] = (17, 33, 49, 81)  # 4n+1 frame counts
    # frames per second clips are sampled at: None or "native" = the profile's (16 Wan 2.1 / 2.2 A14B, 24 Wan 2.2
    # TI2V-5B); "source" = every clip frame at the clip's own rate; a number = that rate (see frame_rate)
    target_fps: float | str | None = setting(None, above=0)
    mode: str = setting("head", choices=MODES)
    windows: int = setting(1, min=0)
    area: int = setting(480 * 832, min=256)  # pixels of a video bucket
    image_area: int = setting(480 * 832, min=256)  # pixels of a photo bucket
    step: int | None = setting(None, min=1)  # None: the profile's (2 x VAE spatial compression: 16 for Wan 2.1, 32 for Wan 2.2)
    upscale: bool = False
    interpolation: str = setting("area", choices=INTERPOLATIONS)
    dtype: str = setting("bfloat16", choices=DTYPES)
    vae_dtype: str = setting("float32", choices=DTYPES)
    device: str = "auto"
    batch_size: int = setting(1, min=1)
    text_batch_size: int = setting(8, min=1)
    image_batch_size: int = setting(8, min=1)
    vae_tiling: bool = True
    tile_size: int = setting(256, min=16)
    tile_stride: int = setting(192, min=8)
    max_text_tokens: int | None = setting(None, min=1)  # None: the profile's

    def check(self) -> None:
        try:
            check_frame_buckets(list(self.frame_buckets))
        except ValueError as e:
            raise ParamsError(f"params.yaml encode.frame_buckets: {list(self.frame_buckets)!r} is not allowed: {e}") from None
        if isinstance(self.target_fps, str) and self.target_fps not in FPS_WORDS:
            raise ParamsError(f"params.yaml encode.target_fps: {self.target_fps!r} is not allowed: must be null, native, source "
                              "or a number of frames per second > 0")
        if self.tile_stride > self.tile_size:
            raise ParamsError(f"params.yaml encode.tile_stride: {self.tile_stride!r} is not allowed: must be <= "
                              f"encode.tile_size ({self.tile_size})")

    @classmethod
    def from_params(cls, p: dict | None) -> EncodeConfig:
        return load_settings(cls, p, "encode")

    def frame_rate(self, profile: Profile) -> float | None:
        """The rate clips are sampled at (target frame k = the clip frame nearest to k / rate seconds):
        ``target_fps`` as a number, the profile's native rate for null / ``native``, None (every clip frame,
        at the clip's own rate) for ``source``."""
        if self.target_fps is None or self.target_fps == "native":
            return float(profile.fps)
        if self.target_fps == "source":
            return None
        if isinstance(self.target_fps, str):
            raise ValueError(f"encode.target_fps {self.target_fps!r} must be null, native, source or a number")
        return float(self.target_fps)

    def resize_params(self) -> dict:
        """What the latent key records about resizing (the bucket itself is keyed separately)."""
        return {"fit": "cover", "crop": "center", "interpolation": self.interpolation, "upscale": self.upscale}

    def spatial_step(self, profile: Profile) -> int:
        """Bucket sides are multiples of this: the VAE's spatial compression x the transformer's 2x2
        patches (16 px for the Wan 2.1 VAE, 32 px for the Wan 2.2 VAE), or a multiple of it."""
        unit = 2 * profile.vae_scale_spatial
        step = int(self.step or unit)
        if step % unit:
            raise ValueError(f"encode.step {step} must be a multiple of {unit} for {profile.name} ({profile.vae} VAE)")
        return step
