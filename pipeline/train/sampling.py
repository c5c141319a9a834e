"""Sample videos while training (``train.samples``, every ``train.sample_every`` steps): each prompt
is denoised by the family's own diffusers pipeline with the LoRA being trained, so a sample shows
what a user of the LoRA gets. Only the denoised latents are made here, from what the encode stage
cached: the prompts' embeddings (``data/prompts.parquet``; the empty prompt is the negative prompt)
and the images' conditioning (``data/sample_images.parquet``): training never loads the text
encoder, the VAE or CLIP. The render stage decodes the latents to mp4 (``pipeline.render``).

By family:

- text-to-video (Wan 2.1 T2V, and Wan 2.2 TI2V-5B for a sample without an image): ``WanPipeline``;
- image-to-video (Wan 2.1 I2V, Wan 2.2 I2V-A14B; every sample gives an ``image``) and TI2V-5B for a
  sample with an image: ``WanImageToVideoPipeline``, its VAE and CLIP replayed from the cache
  (``cached_condition``);
- Wan 2.2 A14B (T2V and I2V): both experts, as at inference: the one being trained with its LoRA,
  the other loaded for sampling (``partner``).

Latents go to ``<run>/samples/step-<NNNNN>/<i>.safetensors`` (``i``: the prompt's place in
``train.samples``; the step counts as the loss curves do: with ``train.expert: both`` the low-noise
expert's steps follow the high-noise expert's), normalised as the pipelines denoise them, with the
prompt, image, step, expert and settings in the metadata. Sampling uses its own seeded generator and restores the RNG state, so a run with
samples trains bitwise the same LoRA as one without.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save_file

from pipeline.cache.store import CacheStore
from pipeline.core.fs import atomic_path
from pipeline.core.sample_size import check_sample_image, sample_entry
from pipeline.models.profiles import Profile
from pipeline.train.config import TrainConfig
from pipeline.train.data import pad_text
from pipeline.train.experts import Expert

log = logging.getLogger("train")

SAMPLES = "samples"  # <run>/samples/step-<NNNNN>/<i>.safetensors


def step_folder(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / SAMPLES / f"step-{step:05d}"


@dataclass(frozen=True)
class SamplePrompt:
    index: int
    prompt: str
    text_key: str
    image: str | None = None  # as written in train.samples
    cond_key: str = ""  # the image's VAE conditioning (sample_images.parquet)
    image_key: str = ""  # its CLIP embedding (Wan 2.1 I2V)


def _table(frame: pl.DataFrame | None, schema: dict) -> pl.DataFrame:
    return frame if frame is not None else pl.DataFrame(schema=schema)


def resolve_prompts(cfg: TrainConfig, prompts: pl.DataFrame | None, store: CacheStore, profile: Profile,
                    images: pl.DataFrame | None = None) -> tuple[list[SamplePrompt], str]:
    """The samples' cache keys (prompt embeddings from ``prompts.parquet``, image conditioning from
    ``sample_images.parquet``) and the empty prompt's key; a one-line error naming what is missing
    when the encode stage has not cached it (or cached it for another sample size)."""
    table = _table(prompts, {"prompt": pl.String, "role": pl.String, "text_key": pl.String})
    keys = {(r["role"], r["prompt"]): r["text_key"] for r in table.iter_rows(named=True)}
    entries = [sample_entry(item) for item in cfg.samples]  # checked by TrainConfig
    wanted = [("empty", "")] + [("sample", p) for p, _ in entries]
    missing = [p for role, p in wanted if (role, p) not in keys and not (role == "sample" and ("empty", p) in keys)]
    if missing:
        raise ValueError(f"train.samples: no cached embedding for prompt(s) {missing[:3]} in data/prompts.parquet; "
                         "re-run the encode stage")
    conds = {r["image"]: r for r in _table(images, {"image": pl.String}).iter_rows(named=True)}
    frames = cfg.sample_frames if profile.task == "i2v" else 1
    out = []
    for i, (p, image) in enumerate(entries):
        check_sample_image(i, image, profile)
        row = conds.get(image) if image is not None else None
        if image is not None and (row is None or list(row["bucket"]) != [frames, cfg.sample_height, cfg.sample_width]):
            raise ValueError(f"train.samples[{i}]: no cached conditioning of image {image} at {cfg.sample_width}x"
                             f"{cfg.sample_height} in data/sample_images.parquet; re-run the encode stage")
        out.append(SamplePrompt(i, p, keys.get(("sample", p)) or keys[("empty", p)], image,
                                row["cond_key"] if row else "", row["image_key"] if row else ""))
    needed = [keys[("empty", "")]] + [k for s in out for k in (s.text_key, s.cond_key, s.image_key) if k]
    for key in [k for k in needed if not store.has(k)]:
        raise ValueError(f"{store.path(key)}: a sample's cache entry is missing; re-run the encode stage")
    return out, keys[("empty", "")]


def make_scheduler(profile: Profile):
    """The family's sampling scheduler: the one in the weights' folder, or for a tiny profile the
    UniPC flow scheduler the Wan diffusers repos ship (shift 3)."""
    from diffusers import UniPCMultistepScheduler

    if profile.is_tiny:
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=1000, flow_shift=3.0)
    from pipeline.models.locate import model_folder

    return UniPCMultistepScheduler.from_pretrained(str(model_folder(profile, "scheduler")))


class SampleMaker:
    """Makes the run's sample latents at the steps ``train.sample_every`` names.

    ``expert`` (Wan 2.2 A14B): the one being trained; the other is loaded at the first sample
    (``partner.load_partner``, with ``partner_lora`` when this run trained it) and freed by ``close``.
    ``step_offset``: what the expert's steps count on from (the loss curves' step)."""

    def __init__(self, cfg: TrainConfig, profile: Profile, prompts: pl.DataFrame | None, store: CacheStore | None,
                 out_dir: Path, device: torch.device, compute: torch.dtype, *, images: pl.DataFrame | None = None,
                 expert: Expert | None = None, storage: str = "fp32", partner_lora: Path | None = None,
                 step_offset: int = 0):
        self.cfg, self.profile, self.store, self.out_dir = cfg, profile, store, Path(out_dir)
        self.device, self.compute, self.storage = device, compute, storage
        self.expert = expert or Expert("", profile.experts[0], 0.0, 1.0)
        self.partner_lora, self.step_offset = partner_lora, step_offset
        self.enabled = bool(cfg.samples) and cfg.sample_every > 0 and store is not None
        self.prompts: list[SamplePrompt] = []
        self.empty_key = ""
        if self.enabled and store is not None:
            unit = 2 * profile.vae_scale_spatial  # the VAE's compression x the transformer's 2x2 patches
            if cfg.sample_width % unit or cfg.sample_height % unit:
                raise ValueError(f"train.sample_width / sample_height must be multiples of {unit} for {profile.name}, "
                                 f"got {cfg.sample_width}x{cfg.sample_height}")
            self.prompts, self.empty_key = resolve_prompts(cfg, prompts, store, profile, images)
        self._scheduler = None
        self._partner: torch.nn.Module | None = None

    def due(self, step: int) -> bool:
        return self.enabled and (step % self.cfg.sample_every == 0 or step == self.cfg.steps)

    def entry(self, key: str, tensor: str) -> torch.Tensor:
        assert self.store is not None  # enabled only with a store
        return self.store.get(key)[tensor].float()

    def embeds(self, key: str) -> torch.Tensor:
        return pad_text(self.entry(key, "prompt_embeds"), self.profile.max_text_tokens)[None].to(self.device)

    def close(self) -> None:
        """Free the other expert (Wan 2.2 A14B)."""
        self._partner = None

    def _experts(self, model) -> dict:
        """The pipeline's transformer(s): ``model`` alone, or both A14B experts in their places."""
        from pipeline.train.partner import load_partner, partner_of

        if partner_of(self.profile, self.expert) is None:
            return {"transformer": model}
        if self._partner is None:
            self._partner = load_partner(self.profile, self.cfg, self.expert, self.device, self.storage, self.compute,
                                         self.partner_lora)
        pair = (model, self._partner) if self.expert.model == self.profile.experts[0] else (self._partner, model)
        return {"transformer": pair[0], "transformer_2": pair[1], "boundary_ratio": self.profile.boundary_ratio}

    def _pipelines(self, model):
        """(text-to-video pipeline, image-to-video pipeline or None), sharing transformer(s) and scheduler."""
        from diffusers import WanPipeline

        from pipeline.train.cached_condition import CachedImageToVideoPipeline, ReplayVae

        if self._scheduler is None:
            self._scheduler = make_scheduler(self.profile)
        experts, ti2v = self._experts(model), self.profile.task == "ti2v"
        t2v = None
        if self.profile.task != "i2v":
            t2v = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=self._scheduler,
                              expand_timesteps=ti2v, **experts)
            t2v.vae_scale_factor_spatial = self.profile.vae_scale_spatial  # no VAE loaded: the family's factors
            t2v.vae_scale_factor_temporal = self.profile.vae_scale_temporal
            t2v.set_progress_bar_config(disable=True)
        i2v = None
        if any(p.image for p in self.prompts):
            vae = ReplayVae(self.profile.latent_channels, self.profile.vae_scale_spatial, self.profile.vae_scale_temporal,
                            self.device)
            i2v = CachedImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=self._scheduler,
                                             expand_timesteps=ti2v, **experts)
            i2v.set_progress_bar_config(disable=True)
        return t2v, i2v

    def run(self, model, step: int) -> list[Path]:
        """Denoise every prompt with ``model`` (the transformer with its LoRA) and store the latents."""
        cfg, at = self.cfg, self.step_offset + step
        folder, paths = step_folder(self.out_dir, at), []
        folder.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        t2v, i2v = self._pipelines(model)
        negative = self.embeds(self.empty_key)
        devices = [self.device] if self.device.type == "cuda" else []
        size = dict(height=cfg.sample_height, width=cfg.sample_width, num_frames=cfg.sample_frames,
                    num_inference_steps=cfg.sample_steps, guidance_scale=cfg.sample_guidance, output_type="latent")
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), \
                    torch.autocast(self.device.type, dtype=self.compute, enabled=self.compute != torch.float32):
                for p in self.prompts:
                    g = torch.Generator("cpu").manual_seed(cfg.sample_seed + p.index)
                    kw = dict(prompt_embeds=self.embeds(p.text_key), negative_prompt_embeds=negative, generator=g, **size)
                    if p.image is None:
                        assert t2v is not None
                        latents = t2v(**kw).frames
                    else:
                        assert i2v is not None
                        self._replay(i2v, p)
                        latents = i2v(image=self._placeholder(), **kw).frames
                    paths.append(self._save(folder / f"{p.index}.safetensors", latents[0], p, at))
        finally:
            model.train(was_training)
        log.info("step %d: %d sample latents -> %s (the render stage makes the videos)", at, len(paths), folder)
        return paths

    def _placeholder(self) -> torch.Tensor:
        from pipeline.train.cached_condition import placeholder_image

        return placeholder_image(self.cfg.sample_height, self.cfg.sample_width)

    def _replay(self, pipe, p: SamplePrompt) -> None:
        """Hand the pipeline's stand-ins the image's cached conditioning."""
        cfg = self.cfg
        ti2v = self.profile.task == "ti2v"
        cond = self.entry(p.cond_key, "latents" if ti2v else "cond_latents")
        pipe.vae.replay(cond, (1 if ti2v else cfg.sample_frames, cfg.sample_height, cfg.sample_width))
        pipe.cached_image_embeds = self.entry(p.image_key, "image_embeds") if p.image_key else None

    def _save(self, path: Path, latents: torch.Tensor, p: SamplePrompt, step: int) -> Path:
        cfg = self.cfg
        meta = {"prompt": p.prompt, "step": str(step), "index": str(p.index), "seed": str(cfg.sample_seed + p.index),
                "frames": str(cfg.sample_frames), "width": str(cfg.sample_width), "height": str(cfg.sample_height),
                "inference_steps": str(cfg.sample_steps), "guidance": str(cfg.sample_guidance),
                "run_name": cfg.run_name, "profile": self.profile.name, "family": self.profile.family,
                "fps": str(self.profile.fps), "image": p.image or "", "expert": self.expert.name,
                "partner_lora": self.partner_lora.name if self.partner_lora and self.expert.name else ""}
        with atomic_path(path) as tmp:
            save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
        return path
