"""Sample videos while training (``train.samples``, every ``train.sample_every`` steps): each prompt
is denoised by the family's own diffusers pipeline (``WanPipeline``) with the LoRA being trained,
so a sample shows what a user of the LoRA gets. Only the denoised latents are made here, from the
prompt embeddings the encode stage cached (``data/prompts.parquet``; the empty prompt is the
negative prompt): training never loads the text encoder or the VAE. The render stage decodes them
to mp4 (``pipeline.render``).

Latents go to ``<run>/samples/step-<NNNNN>/<i>.safetensors`` (``i``: the prompt's place in
``train.samples``), normalised as ``WanPipeline`` denoises them, with the prompt, step and settings
in the metadata. Sampling uses its own seeded generator and restores the RNG state, so a run with
samples trains bitwise the same LoRA as one without.

Families: text-to-video ones (Wan 2.1 T2V, Wan 2.2 TI2V-5B, which samples text-to-video). The
image-to-video families need the VAE for the image condition and Wan 2.2 A14B both experts at once,
which a run that trains one expert at a time does not hold: their samples are skipped with a
warning.
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
from pipeline.models.profiles import Profile
from pipeline.train.config import TrainConfig
from pipeline.train.data import pad_text

log = logging.getLogger("train")

SAMPLES = "samples"  # <run>/samples/step-<NNNNN>/<i>.safetensors


def step_folder(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / SAMPLES / f"step-{step:05d}"


def sample_prompt(item) -> str:
    """A ``train.samples`` entry: a prompt, or a mapping with ``prompt``."""
    return item["prompt"] if isinstance(item, dict) else item


def supported(profile: Profile) -> bool:
    return profile.task != "i2v" and len(profile.experts) == 1


@dataclass(frozen=True)
class SamplePrompt:
    index: int
    prompt: str
    text_key: str


def resolve_prompts(cfg: TrainConfig, prompts: pl.DataFrame | None, store: CacheStore) -> tuple[list[SamplePrompt], str]:
    """The samples' prompt keys and the empty prompt's key, from ``prompts.parquet``; a one-line
    error naming what is missing when the encode stage has not cached them."""
    table = prompts if prompts is not None else pl.DataFrame(schema={"prompt": pl.String, "role": pl.String,
                                                                      "text_key": pl.String})
    keys = {(r["role"], r["prompt"]): r["text_key"] for r in table.iter_rows(named=True)}
    wanted = [("empty", "")] + [("sample", sample_prompt(s)) for s in cfg.samples]
    missing = [p for role, p in wanted if (role, p) not in keys and not (role == "sample" and ("empty", p) in keys)]
    if missing:
        raise ValueError(f"train.samples: no cached embedding for prompt(s) {missing[:3]} in data/prompts.parquet; "
                         "re-run the encode stage")
    out = []
    for i, item in enumerate(cfg.samples):
        p = sample_prompt(item)
        out.append(SamplePrompt(i, p, keys.get(("sample", p)) or keys[("empty", p)]))
    for key in [k for k in [keys[("empty", "")]] + [s.text_key for s in out] if not store.has(k)]:
        raise ValueError(f"{store.path(key)}: a sample prompt's embedding is not in the cache; re-run the encode stage")
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
    """Makes the run's sample latents at the steps ``train.sample_every`` names."""

    def __init__(self, cfg: TrainConfig, profile: Profile, prompts: pl.DataFrame | None, store: CacheStore | None,
                 out_dir: Path, device: torch.device, compute: torch.dtype):
        self.cfg, self.profile, self.store, self.out_dir = cfg, profile, store, Path(out_dir)
        self.device, self.compute = device, compute
        self.enabled = bool(cfg.samples) and cfg.sample_every > 0 and store is not None
        self.prompts: list[SamplePrompt] = []
        self.empty_key = ""
        if self.enabled and not supported(profile):
            log.warning("train.samples: sample videos are made for text-to-video families only, not %s; skipped",
                        profile.family)
            self.enabled = False
        if self.enabled and store is not None:
            self.prompts, self.empty_key = resolve_prompts(cfg, prompts, store)
        self._scheduler = None

    def due(self, step: int) -> bool:
        return self.enabled and (step % self.cfg.sample_every == 0 or step == self.cfg.steps)

    def embeds(self, key: str) -> torch.Tensor:
        assert self.store is not None  # enabled only with a store
        text = self.store.get(key)["prompt_embeds"].float()
        return pad_text(text, self.profile.max_text_tokens)[None].to(self.device)

    def run(self, model, step: int) -> list[Path]:
        """Denoise every prompt with ``model`` (the transformer with its LoRA) and store the latents."""
        from diffusers import WanPipeline

        if self._scheduler is None:
            self._scheduler = make_scheduler(self.profile)
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=self._scheduler, transformer=model,
                           expand_timesteps=self.profile.task == "ti2v")
        pipe.vae_scale_factor_spatial = self.profile.vae_scale_spatial  # no VAE loaded: the family's factors
        pipe.vae_scale_factor_temporal = 4
        pipe.set_progress_bar_config(disable=True)
        cfg, folder, paths = self.cfg, step_folder(self.out_dir, step), []
        folder.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        negative = self.embeds(self.empty_key)
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), \
                    torch.autocast(self.device.type, dtype=self.compute, enabled=self.compute != torch.float32):
                for p in self.prompts:
                    g = torch.Generator("cpu").manual_seed(cfg.sample_seed + p.index)
                    latents = pipe(prompt_embeds=self.embeds(p.text_key), negative_prompt_embeds=negative,
                                   height=cfg.sample_height, width=cfg.sample_width, num_frames=cfg.sample_frames,
                                   num_inference_steps=cfg.sample_steps, guidance_scale=cfg.sample_guidance,
                                   generator=g, output_type="latent").frames
                    paths.append(self._save(folder / f"{p.index}.safetensors", latents[0], p, step))
        finally:
            model.train(was_training)
        log.info("step %d: %d sample latents -> %s (the render stage makes the videos)", step, len(paths), folder)
        return paths

    def _save(self, path: Path, latents: torch.Tensor, p: SamplePrompt, step: int) -> Path:
        cfg = self.cfg
        meta = {"prompt": p.prompt, "step": str(step), "index": str(p.index), "seed": str(cfg.sample_seed + p.index),
                "frames": str(cfg.sample_frames), "width": str(cfg.sample_width), "height": str(cfg.sample_height),
                "inference_steps": str(cfg.sample_steps), "guidance": str(cfg.sample_guidance),
                "run_name": cfg.run_name, "profile": self.profile.name, "family": self.profile.family,
                "fps": str(self.profile.fps)}
        with atomic_path(path) as tmp:
            save_file({"latents": latents.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
        return path
