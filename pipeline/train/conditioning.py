"""What a family's transformer sees in a training step, built from cached tensors alone.

Every family denoises x_t = (1 - t) x0 + t noise and is trained to predict noise - x0. What
differs is the conditioning, built here exactly as the diffusers pipelines build it at inference:

- ``t2v`` (Wan 2.1 T2V, Wan 2.2 T2V-A14B): ``hidden_states`` = x_t, ``timestep`` = t * 1000.
- ``i2v`` (Wan 2.1 I2V, Wan 2.2 I2V-A14B; ``WanImageToVideoPipeline``): ``hidden_states`` =
  cat([x_t, mask, cond_latents], dim=1), where ``cond_latents`` (cache entry ``cond_key``) are the
  normalised VAE latents of the first frame followed by zeros (the pipeline's ``latent_condition``)
  and ``mask`` the ``vae_scale_temporal``-channel first-frame mask of ``prepare_latents`` (ones on
  the first pixel frame, zeros after, folded by the temporal compression). Wan 2.1 I2V also gets
  ``encoder_hidden_states_image`` = the CLIP embeddings of the first frame (cache entry ``image_key``).
  A photo (one frame) would be its own condition, so these families skip image samples.
- ``ti2v`` (Wan 2.2 TI2V-5B; the pipelines' ``expand_timesteps``): for a video the first latent
  frame of x_t is the clean first frame of x0, the timestep is per token ([B, tokens]: 0 on the
  first frame's tokens, t * 1000 elsewhere) and the loss leaves the first frame out. A photo is
  trained as text-to-image, as the 5B model generates from text alone: every token at t.
  ``train.ti2v_mode`` picks what a TI2V video trains: ``i2v`` (the default, as above), ``t2v``
  (no clean frame: every token at t, the whole video in the loss, a plain text-to-video step as
  ``WanPipeline(expand_timesteps=True)`` without an image runs it) or ``mixed`` (each sample a fair
  coin, drawn from the batch's seeded generator: half the videos i2v, half t2v). Other families
  ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TASKS = ("t2v", "i2v", "ti2v")
TI2V_MODES = ("i2v", "t2v", "mixed")


@dataclass
class TrainInputs:
    """One batch from the cache: latents [B, C, F, H, W], prompt embeddings [B, L, D], and the
    family's conditioning (``cond`` [B, C, F, H, W] for I2V, ``image`` [B, N, D] for Wan 2.1 I2V)."""

    latents: torch.Tensor
    text: torch.Tensor
    cond: torch.Tensor | None = None
    image: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainInputs:
        move = lambda x: None if x is None else x.to(device, non_blocking=non_blocking)  # noqa: E731
        return TrainInputs(self.latents.to(device, non_blocking=non_blocking), self.text.to(device, non_blocking=non_blocking),
                           move(self.cond), move(self.image))


def first_frame_mask(batch: int, latent_frames: int, height: int, width: int, scale_temporal: int = 4,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The I2V frame mask [B, scale_temporal, F, H, W] as ``WanImageToVideoPipeline.prepare_latents``
    builds it: one value per pixel frame (1 for the given first frame, 0 after), the first frame
    repeated ``scale_temporal`` times, then folded into channels."""
    pixel_frames = (latent_frames - 1) * scale_temporal + 1
    mask = torch.ones(batch, 1, pixel_frames, height, width, device=device, dtype=dtype)
    mask[:, :, 1:] = 0
    first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=scale_temporal)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    return mask.view(batch, -1, scale_temporal, height, width).transpose(1, 2)


def token_timesteps(t: torch.Tensor, latent_shape: tuple[int, ...], patch: tuple[int, int, int],
                    keep_first_frame: bool | torch.Tensor) -> torch.Tensor:
    """Per-token timesteps [B, tokens] (``expand_timesteps``): t * 1000 on every token, 0 on the
    first latent frame's tokens when that frame is given clean (``keep_first_frame``: for the whole
    batch, or per sample as a [B] bool tensor)."""
    _, _, f, h, w = latent_shape
    if isinstance(keep_first_frame, torch.Tensor):
        frame_t = torch.ones(len(keep_first_frame), f // patch[0], h // patch[1], w // patch[2], device=t.device, dtype=t.dtype)
        frame_t[:, 0] = (~keep_first_frame.to(t.device)).to(t.dtype).view(-1, 1, 1)
        return frame_t.flatten(1) * (t * 1000).unsqueeze(1)
    frame_t = torch.ones(f // patch[0], h // patch[1], w // patch[2], device=t.device, dtype=t.dtype)
    if keep_first_frame:
        frame_t[0] = 0
    return frame_t.flatten().unsqueeze(0) * (t * 1000).unsqueeze(1)


@dataclass(frozen=True)
class Conditioning:
    """How a family conditions its transformer (see the module docstring)."""

    task: str = "t2v"
    image_embeds: bool = False  # Wan 2.1 I2V: CLIP embeddings as encoder_hidden_states_image
    scale_temporal: int = 4
    ti2v_mode: str = "i2v"  # TI2V videos: i2v | t2v | mixed (train.ti2v_mode); "i2v" for every other task

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task '{self.task}'; choose one of {list(TASKS)}")
        if self.ti2v_mode not in TI2V_MODES:
            raise ValueError(f"unknown ti2v_mode '{self.ti2v_mode}'; choose one of {list(TI2V_MODES)}")

    @classmethod
    def of(cls, profile, ti2v_mode: str = "i2v") -> Conditioning:
        """The profile's conditioning; ``ti2v_mode`` counts for a TI2V profile only (others keep "i2v": no effect)."""
        return cls(profile.task, profile.image_encoder, profile.vae_scale_temporal, ti2v_mode if profile.task == "ti2v" else "i2v")

    def checkpoint_settings(self, settings: dict) -> dict:
        """The train settings a checkpoint must match, less ``ti2v_mode`` where it changes nothing (another
        family, or TI2V's default ``i2v``, what every run trained before the setting existed: their checkpoints resume)."""
        return {k: v for k, v in settings.items() if k != "ti2v_mode" or self.ti2v_mode != "i2v"}

    def draw_clean_first(self, batch: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor | None:
        """TI2V ``mixed``: which samples of a batch keep their first latent frame clean ([B] bool, a fair coin
        each from ``generator``, drawn after the batch's timesteps and noise); None for every other mode."""
        if self.task != "ti2v" or self.ti2v_mode != "mixed":
            return None
        return torch.rand(batch, generator=generator, device=device) < 0.5

    @property
    def needs_cond(self) -> bool:
        """Whether batches need the ``cond_latents`` entry."""
        return self.task == "i2v"

    @property
    def trains_images(self) -> bool:
        """Whether one-frame samples are trained (not for I2V: the frame would be its own condition)."""
        return self.task != "i2v"

    def model_inputs(self, inputs: TrainInputs, x_t: torch.Tensor, t: torch.Tensor,
                     patch: tuple[int, int, int] = (1, 2, 2),
                     clean_first: torch.Tensor | None = None) -> tuple[dict, bool | torch.Tensor]:
        """(transformer keyword arguments, whether the loss leaves the first latent frame out: for the
        whole batch, or per sample as a [B] bool tensor). ``clean_first``: TI2V ``mixed``'s coins
        (:meth:`draw_clean_first`)."""
        x0 = inputs.latents
        if self.task == "ti2v":
            keep: bool | torch.Tensor = x0.shape[2] > 1 and self.ti2v_mode != "t2v"  # a photo is trained text-to-image
            if keep and self.ti2v_mode == "mixed":
                if clean_first is None:
                    raise ValueError("ti2v_mode mixed needs each sample's coin (Conditioning.draw_clean_first)")
                keep = clean_first.to(x0.device)
                first = torch.where(keep.view(-1, 1, 1, 1, 1), x0[:, :, :1], x_t[:, :, :1])
                x_t = torch.cat([first, x_t[:, :, 1:]], dim=2)
            elif keep:
                x_t = torch.cat([x0[:, :, :1], x_t[:, :, 1:]], dim=2)
            kwargs = {"hidden_states": x_t, "timestep": token_timesteps(t, tuple(x0.shape), patch, keep)}
            return kwargs, keep
        kwargs = {"timestep": t * 1000}
        if self.task == "i2v":
            if inputs.cond is None:
                raise ValueError("image-to-video training needs the conditioning latents (cond_key) of every sample")
            b, _, f, h, w = x0.shape
            mask = first_frame_mask(b, f, h, w, self.scale_temporal, x0.device, x0.dtype)
            x_t = torch.cat([x_t, mask, inputs.cond.to(x0.dtype)], dim=1)
        if self.image_embeds:
            if inputs.image is None:
                raise ValueError("Wan 2.1 image-to-video training needs the CLIP image embeddings (image_key) of every sample")
            kwargs["encoder_hidden_states_image"] = inputs.image
        kwargs["hidden_states"] = x_t
        return kwargs, False


T2V = Conditioning()
