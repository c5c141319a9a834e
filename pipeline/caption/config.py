"""The caption params (``params.yaml`` group ``caption``) turned into run settings and a backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.caption.backends.base import GenerationParams
from pipeline.caption.captioning import RunSettings
from pipeline.caption.cleanup import CleanupConfig
from pipeline.caption.media import FrameSampling
from pipeline.caption.prompts import IMAGE_PROMPT, VIDEO_PROMPT
from pipeline.core.config import ParamsError, load_settings, setting

TINY = "tiny"
# Random weights rarely emit a usable answer on their own: with the tiny model, EOS is held
# back for this many tokens (``min_new_tokens``) so the demo and tests always get text.
TINY_MIN_NEW_TOKENS = 16


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # the server's URL up to /v1
    model_name: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # the model name the server serves
    api_key_env: str | None = "VLP_CAPTION_API_KEY"  # env var holding the API key; None or "" = no key
    timeout_s: float = setting(300.0, above=0)  # one request, start to end
    concurrency: int = setting(8, min=1)  # requests in flight
    retries: int = setting(2, min=0)  # on connection errors, 429 and 5xx
    extra_body: dict[str, Any] = setting(factory=dict)  # merged into every request
    max_response_bytes: int = setting(4 * 1024 * 1024, min=1)  # a longer answer fails its clip
    circuit_failures: int = setting(3, min=0)  # consecutive transport failures that stop the rest; 0 = never


@dataclass(frozen=True)
class CaptionConfig:
    backend: str = setting("transformers", choices=("transformers", "openai"))
    model: str = TINY  # tiny | a hub id | a local folder
    device: str = "auto"
    dtype: str = setting("auto", choices=("auto", "bfloat16", "float16", "float32"))
    attn_implementation: str = setting("sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    batch_size: int = setting(4, min=1)
    fps: float = setting(2.0, above=0)  # frames sampled per second of clip
    max_frames: int = setting(32, min=1)
    max_pixels: int = setting(360 * 640, min=28 * 28)  # per video frame
    min_pixels: int = setting(28 * 28 * 4, min=1)
    image_max_pixels: int = setting(1024 * 1024, min=28 * 28)
    max_new_tokens: int = setting(160, min=1)
    min_new_tokens: int = setting(0, min=0)
    do_sample: bool = False
    temperature: float = setting(0.7, above=0)
    top_p: float = setting(0.9, above=0, max=1)
    seed: int = 0
    prompt: str | None = None  # None: the built-in video prompt
    image_prompt: str | None = None  # None: the built-in photo prompt
    trigger: str = ""
    max_words: int = setting(120, min=0)  # 0 = no cap
    max_chars: int = setting(0, min=0)  # 0 = no cap
    chunk_size: int = setting(8, min=1)  # captions written to the parts store every this many clips
    tiny_dir: str | None = None
    openai: OpenAIConfig = setting(factory=OpenAIConfig)

    def check(self) -> None:
        if self.min_new_tokens > self.max_new_tokens:
            raise ParamsError(f"params.yaml caption.min_new_tokens: {self.min_new_tokens!r} is not allowed: must be "
                              f"<= caption.max_new_tokens ({self.max_new_tokens})")
        if self.min_pixels > self.max_pixels:
            raise ParamsError(f"params.yaml caption.min_pixels: {self.min_pixels!r} is not allowed: must be <= "
                              f"caption.max_pixels ({self.max_pixels})")

    @classmethod
    def from_params(cls, p: dict | CaptionConfig | None) -> CaptionConfig:
        if isinstance(p, CaptionConfig):
            return p
        return load_settings(cls, p, "caption")


def generation_params(cfg: CaptionConfig) -> GenerationParams:
    min_new = cfg.min_new_tokens
    if cfg.backend == "transformers" and cfg.model == TINY:
        min_new = max(min_new, TINY_MIN_NEW_TOKENS)
    return GenerationParams(max_new_tokens=cfg.max_new_tokens, min_new_tokens=min_new, do_sample=cfg.do_sample,
                            temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)


def run_settings(p: dict | CaptionConfig) -> RunSettings:
    cfg = CaptionConfig.from_params(p)
    return RunSettings(
        video_prompt=cfg.prompt or VIDEO_PROMPT,
        image_prompt=cfg.image_prompt or IMAGE_PROMPT,
        sampling=FrameSampling(fps=cfg.fps, max_frames=cfg.max_frames, max_pixels=cfg.max_pixels,
                               image_max_pixels=cfg.image_max_pixels),
        generation_key=generation_params(cfg).as_key(),
        cleanup=CleanupConfig(max_words=cfg.max_words, max_chars=cfg.max_chars, trigger=cfg.trigger),
        batch_size=batch_size(cfg),
    )


def batch_size(cfg: CaptionConfig) -> int:
    """Clips per backend call; for a server, enough to keep ``openai.concurrency`` requests in flight."""
    return max(cfg.batch_size, cfg.openai.concurrency) if cfg.backend == "openai" else cfg.batch_size


def make_backend(p: dict | CaptionConfig, settings: RunSettings):
    """(model label, factory) for the configured backend; the factory loads the model or opens
    the endpoint, and is only called when some clip needs the VLM."""
    cfg = CaptionConfig.from_params(p)
    generation = generation_params(cfg)
    if cfg.backend == "openai":
        from pipeline.caption.backends.openai import (
            EndpointConfig,
            OpenAICaptioner,
            endpoint_label,
        )

        o = cfg.openai
        endpoint = EndpointConfig(base_url=o.base_url, model_name=o.model_name, api_key_env=o.api_key_env or "",
                                  timeout_s=o.timeout_s, concurrency=o.concurrency, retries=o.retries,
                                  extra_body=dict(o.extra_body), max_response_bytes=o.max_response_bytes,
                                  circuit_failures=o.circuit_failures)
        label = endpoint_label(endpoint)
        return label, lambda: OpenAICaptioner(endpoint, generation, label)

    from pipeline.caption.fingerprint import (
        model_dir_fingerprint,
        model_label,
        resolve_model_dir,
    )

    if cfg.model == TINY:
        from pipeline.models.tiny.vlm import tiny_config_hash, tiny_vlm_dir

        label = model_label(TINY, tiny_config_hash())

        def path() -> str:
            return str(tiny_vlm_dir(cache_dir=cfg.tiny_dir or None))
    else:
        model_dir = resolve_model_dir(cfg.model)
        label = model_label(cfg.model, model_dir_fingerprint(model_dir))

        def path() -> str:
            return str(model_dir)

    def factory():
        from pipeline.caption.backends.hf import TransformersCaptioner

        return TransformersCaptioner(path(), generation, settings.sampling, label=label, device=cfg.device,
                                     dtype=cfg.dtype, min_pixels=cfg.min_pixels,
                                     attn_implementation=cfg.attn_implementation)

    return label, factory


def stage_paths(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    return {"captions": out / "captions.parquet", "parts": out / "captions.parts", "metrics": out / "metrics" / "caption.json"}
