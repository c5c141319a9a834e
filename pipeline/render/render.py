"""Sample latents -> mp4: denormalise (the inverse of the encode stage's normalisation, what
``WanPipeline`` does before decoding), decode with the family's VAE, write H.264 at the family's
frame rate. One VAE load for every sample that has no video yet; a sample already rendered is
not decoded again (its mp4 is newer than its latents)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path
from pipeline.models.profiles import Profile

log = logging.getLogger("render")


@dataclass(frozen=True)
class SampleLatents:
    """One sample of one run at one step: ``<lora>/<run>/samples/step-<NNNNN>/<i>.safetensors``."""

    path: Path
    run: str
    step: str  # the folder name, step-<NNNNN>
    index: str

    def video(self, samples_dir: Path) -> Path:
        """Where its video goes: ``<samples_dir>/<run>/<step>/<i>.mp4``."""
        return samples_dir / self.run / self.step / f"{self.index}.mp4"


def find_sample_latents(lora_dir: Path) -> list[SampleLatents]:
    """Every run's sample latents under ``lora_dir``, in run, step and prompt order."""
    out = []
    for path in lora_dir.glob("*/samples/step-*/*.safetensors"):
        out.append(SampleLatents(path, path.parents[2].name, path.parent.name, path.stem))
    return sorted(out, key=lambda s: (s.run, s.step, int(s.index) if s.index.isdigit() else 0, s.index))


def read_latents(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("latents"), dict(f.metadata() or {})


def to_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """H.264 (yuv420p, even size by padding one pixel when needed), written atomically."""
    h, w = frames.shape[1:3]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            s.options = {"crf": "18"}
            for f in frames:
                for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)


def render_samples(todo: list[SampleLatents], samples_dir: Path, profile: Profile, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> tuple[int, list[str]]:
    """Decode ``todo`` to mp4 (one VAE load); (rendered, one line per sample that failed). A sample
    of another model family than ``profile``'s is a failure of that sample (its VAE would be wrong)."""
    from pipeline.models.vae import denormalize_latents, load_vae

    if not todo:
        return 0, []
    vae = load_vae(profile, dtype, device)
    done, failed = 0, []
    for s in tqdm(todo, desc="render samples", unit="video", disable=None):
        try:
            latents, meta = read_latents(s.path)
            if meta.get("family") and meta["family"] != profile.family:
                raise ValueError(f"latents of {meta['family']}, the model is {profile.family} (model.profile)")
            with torch.no_grad():
                video = vae.decode(denormalize_latents(latents[None].to(device), vae).to(dtype)).sample[0]
            write_mp4(s.video(samples_dir), to_frames(video), float(meta.get("fps") or profile.fps))
            done += 1
        except Exception as exc:  # noqa: BLE001 - one sample's failure is its own; the batch goes on
            failed.append(f"{s.path}: {one_line(exc)}")
            log.warning("%s", failed[-1])
    del vae
    return done, failed
