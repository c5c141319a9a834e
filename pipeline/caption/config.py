"""The caption params (``params.yaml`` group ``caption``) turned into run settings and a backend."""

from __future__ import annotations

from pathlib import Path

from pipeline.caption.backend import GenerationParams
from pipeline.caption.cleanup import CleanupConfig
from pipeline.caption.media import FrameSampling
from pipeline.caption.prompts import IMAGE_PROMPT, VIDEO_PROMPT
from pipeline.caption.runner import RunSettings

TINY = "tiny"
# Random weights rarely emit a usable answer on their own: with the tiny model, EOS is held
# back for this many tokens (``min_new_tokens``) so the demo and tests always get text.
TINY_MIN_NEW_TOKENS = 16


def generation_params(p: dict) -> GenerationParams:
    min_new = int(p.get("min_new_tokens", 0) or 0)
    if p.get("backend", "transformers") == "transformers" and p.get("model", TINY) == TINY:
        min_new = max(min_new, TINY_MIN_NEW_TOKENS)
    return GenerationParams(
        max_new_tokens=int(p.get("max_new_tokens", 160)),
        min_new_tokens=min_new,
        do_sample=bool(p.get("do_sample", False)),
        temperature=float(p.get("temperature", 0.7)),
        top_p=float(p.get("top_p", 0.9)),
        seed=int(p.get("seed", 0)),
    )


def run_settings(p: dict) -> RunSettings:
    return RunSettings(
        video_prompt=p.get("prompt") or VIDEO_PROMPT,
        image_prompt=p.get("image_prompt") or IMAGE_PROMPT,
        sampling=FrameSampling(
            fps=float(p.get("fps", 2.0)),
            max_frames=int(p.get("max_frames", 32)),
            max_pixels=int(p.get("max_pixels", 360 * 640)),
            image_max_pixels=int(p.get("image_max_pixels", 1024 * 1024)),
        ),
        generation_key=generation_params(p).as_key(),
        cleanup=CleanupConfig(
            max_words=int(p.get("max_words", 120) or 0),
            max_chars=int(p.get("max_chars", 0) or 0),
            trigger=str(p.get("trigger") or ""),
        ),
        batch_size=batch_size(p),
    )


def batch_size(p: dict) -> int:
    """Clips per backend call; for a server, enough to keep ``openai.concurrency`` requests in flight."""
    size = max(1, int(p.get("batch_size", 4)))
    if p.get("backend") == "openai":
        size = max(size, int((p.get("openai") or {}).get("concurrency", 8)))
    return size


def make_backend(p: dict, settings: RunSettings):
    """(model label, factory) for the configured backend; the factory loads the model or opens
    the endpoint, and is only called when some clip needs the VLM."""
    backend = p.get("backend", "transformers")
    generation = generation_params(p)
    if backend == "openai":
        from pipeline.caption.openai_http import EndpointConfig, OpenAICaptioner, endpoint_label

        o = dict(p.get("openai") or {})
        endpoint = EndpointConfig(
            base_url=o.get("base_url", EndpointConfig.base_url),
            model_name=o.get("model_name", EndpointConfig.model_name),
            api_key_env=o.get("api_key_env", EndpointConfig.api_key_env) or "",
            timeout_s=float(o.get("timeout_s", EndpointConfig.timeout_s)),
            concurrency=max(1, int(o.get("concurrency", EndpointConfig.concurrency))),
            retries=max(0, int(o.get("retries", EndpointConfig.retries))),
            extra_body=dict(o.get("extra_body") or {}),
            max_response_bytes=max(1, int(o.get("max_response_bytes", EndpointConfig.max_response_bytes))),
            circuit_failures=max(0, int(o.get("circuit_failures", EndpointConfig.circuit_failures))),
        )
        label = endpoint_label(endpoint)
        return label, lambda: OpenAICaptioner(endpoint, generation, label)
    if backend != "transformers":
        raise ValueError(f"caption.backend must be 'transformers' or 'openai', got {backend!r}")

    from pipeline.caption.fingerprint import model_dir_fingerprint, model_label, resolve_model_dir

    model = str(p.get("model", TINY))
    if model == TINY:
        from pipeline.caption.tiny_vlm import tiny_config_hash, tiny_vlm_dir

        label = model_label(TINY, tiny_config_hash())
        cache_dir = p.get("tiny_dir") or None

        def path() -> str:
            return str(tiny_vlm_dir(cache_dir=cache_dir))
    else:
        model_dir = resolve_model_dir(model)
        label = model_label(model, model_dir_fingerprint(model_dir))

        def path() -> str:
            return str(model_dir)

    def factory():
        from pipeline.caption.hf import TransformersCaptioner

        return TransformersCaptioner(
            path(), generation, settings.sampling, label=label,
            device=str(p.get("device", "auto")), dtype=str(p.get("dtype", "auto")),
            min_pixels=int(p.get("min_pixels", 28 * 28 * 4)),
            attn_implementation=str(p.get("attn_implementation", "sdpa")),
        )

    return label, factory


def stage_paths(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    return {"captions": out / "captions.parquet", "parts": out / "captions.parts", "metrics": out / "metrics" / "caption.json"}
