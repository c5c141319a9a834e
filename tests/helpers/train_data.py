"""Synthetic inputs of the train stage: encoded.parquet, clips.parquet, captions.parquet and a
cache of random normalised latents and prompt embeddings (tiny profile shapes), plus for
image-to-video families the first-frame conditioning latents and (Wan 2.1 I2V) CLIP embeddings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import torch

from pipeline.cache.store import CacheStore
from pipeline.core import schemas

TEXT_DIM = 32
IMAGE_TOKENS, IMAGE_DIM = 17, 32  # the tiny CLIP vision model's hidden_states[-2] (32 px images, 8 px patches)


def _filled(table: str, row: dict) -> dict:
    """``row`` with every other column of ``table`` set to an empty value of its dtype."""
    empty = {pl.String: "", pl.Int32: 0, pl.Int64: 0, pl.Float64: 0.0, pl.Boolean: False}
    return {c: row.get(c, empty.get(t, [])) for c, t in schemas.TABLES[table].items()}


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_dataset(root: Path, clips: list[dict], seed: int = 0, family: str = "wan2.1-t2v", profile=None) -> Path:
    """``clips``: dicts with clip_id, kind (video|image), frames (pixel frames, 4n+1), height, width,
    windows (default 1), source (default "src-<clip_id>"), tokens (default 7).
    ``profile`` (a tiny profile): its family, latent channels and VAE compression, and the cache
    entries its conditioning needs (``cond_latents``, ``image_embeds``), as the encode stage writes them.
    Writes root/data/{encoded,clips,captions}.parquet and root/data/cache; returns root/data."""
    channels, spatial = (profile.latent_channels, profile.vae_scale_spatial) if profile else (16, 8)
    family = profile.family if profile else family
    with_cond = profile is not None and profile.task == "i2v"
    with_image = profile is not None and profile.image_encoder
    data = root / "data"
    store = CacheStore(data / "cache")
    g = torch.Generator().manual_seed(seed)
    enc, clip_rows, cap_rows = [], [], []
    for c in clips:
        cid, kind = c["clip_id"], c.get("kind", "video")
        frames, h, w = c.get("frames", 17), c.get("height", 64), c.get("width", 64)
        shape = [channels, (frames - 1) // 4 + 1, h // spatial, w // spatial]
        source = c.get("source", f"src-{cid}")
        caption = c.get("caption", f"a clip called {cid}")
        text_key = _key(f"text:{caption}")
        tokens = c.get("tokens", 7)
        store.put(text_key, {"prompt_embeds": torch.randn(tokens, TEXT_DIM, generator=g)})
        for win in range(c.get("windows", 1)):
            latent_key = _key(f"latent:{cid}:{win}")
            store.put(latent_key, {"latents": torch.randn(shape, generator=g).to(torch.bfloat16)})
            cond_key = _key(f"cond:{cid}:{win}") if with_cond else ""
            if with_cond:
                store.put(cond_key, {"cond_latents": torch.randn(shape, generator=g).to(torch.bfloat16)})
            image_key = _key(f"image:{cid}:{win}") if with_image else ""
            if with_image:
                store.put(image_key, {"image_embeds": torch.randn(IMAGE_TOKENS, IMAGE_DIM, generator=g).to(torch.bfloat16)})
            enc.append({
                "sample_id": f"{cid}#{win}", "clip_id": cid, "kind": kind, "window": win,
                "frame_indices": list(range(win * frames, win * frames + frames)),
                "bucket_frames": frames, "bucket_height": h, "bucket_width": w,
                "latent_key": latent_key, "text_key": text_key, "cond_key": cond_key, "image_key": image_key,
                "latent_shape": shape, "text_shape": [tokens, TEXT_DIM],
                "dtype": "bfloat16", "family": family, "vae": "tiny/vae@0", "text_encoder": "tiny/te@0", "caption": caption,
            })
        n = frames * c.get("windows", 1)
        clip_rows.append(_filled("clips", {
            "clip_id": cid, "source_id": _key(source), "source_path": f"{source}.{'png' if kind == 'image' else 'mp4'}",
            "kind": kind, "scene_index": 0, "start_frame": 10, "end_frame": 10 + n, "start_s": 0.4, "end_s": 0.4 + n / 25,
            "n_frames": n, "fps": 25.0, "resampled": False, "rotation_applied": 0, "width": w, "height": h,
            "path": f"data/raw/{source}.{'png' if kind == 'image' else 'mp4'}", "source_frames": 0, "clip_file": "",
            "sha256": _key(cid), "status": "ok", "reason": "", "note": "",
        }))
        cap_rows.append(_filled("captions", {"kind": kind,
            "clip_id": cid, "caption": caption, "model": "tiny@0", "prompt_sha256": _key("p"), "sampling": "{}",
            "source": c.get("caption_source", "vlm"), "status": "ok", "reason": "", "created_at": "2026-01-01T00:00:00Z",
        }))
    schemas.write_table(schemas.frame("encoded", enc), data / "encoded.parquet", "encoded")
    schemas.write_table(schemas.frame("clips", clip_rows), data / "clips.parquet", "clips")
    schemas.write_table(schemas.frame("captions", cap_rows), data / "captions.parquet", "captions")
    return data


def add_empty_prompt(data: Path, tokens: int = 1, seed: int = 99) -> str:
    """Cache an "empty prompt" embedding and write data/prompts.parquet as the encode stage does; its key."""
    key = _key("text:")
    CacheStore(data / "cache").put(key, {"prompt_embeds": torch.randn(tokens, TEXT_DIM, generator=torch.Generator().manual_seed(seed))})
    row = {"prompt": "", "role": "empty", "text_key": key, "text_shape": [tokens, TEXT_DIM], "text_encoder": "tiny/te@0"}
    schemas.write_table(schemas.frame("prompts", [row]), data / "prompts.parquet", "prompts")
    return key
