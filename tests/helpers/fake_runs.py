"""Synthetic LoRA runs (manifest + LoRA files with vlp metadata) for the audit, report and export tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.core import schemas
from pipeline.core.fs import sha256_file, sha256_json


def manifest_row(clip_id: str, source_id: str, source_path: str, window: int = 0, caption: str = "a caption",
                 caption_source: str = "vlm", held_out: bool = False, kind: str = "video", times_seen: int = 3,
                 start_frame: int = 0, end_frame: int = 50, fps: float = 25.0, family: str = "wan2.1-t2v",
                 expert: str = "", licence: str = "", consent: str = "unknown", face_share: float | None = None,
                 face: bool | None = None) -> dict:
    n = 1 if kind == "image" else 17
    return {
        "sample_id": f"{clip_id}#{window}", "clip_id": clip_id, "source_id": source_id, "source_path": source_path,
        "kind": kind, "start_frame": start_frame, "end_frame": end_frame,
        "start_s": start_frame / fps, "end_s": end_frame / fps,
        "frame_indices": list(range(window * n, window * n + n)), "caption": caption, "caption_source": caption_source,
        "latent_key": sha256_json(["latent", clip_id, window]), "text_key": sha256_json(["text", caption]),
        "bucket_frames": n, "bucket_height": 32, "bucket_width": 48, "times_seen": 0 if held_out else times_seen,
        "held_out": held_out, "family": family, "expert": expert,
        "licence": licence, "consent": consent, "face_share": face_share, "face": face,
    }


def write_run(run_dir: Path, rows: list[dict], run_name: str | None = None, rank: int = 4, steps: int = 10,
              losses: list[float] | None = None, family: str = "wan2.1-t2v", experts: tuple[str, ...] = ("",),
              metadata: dict[str, str] | None = None) -> Path:
    """Write data/lora/<run>/{manifest.parquet, <run>.safetensors, <run>_comfy.safetensors, loss.csv, ...}
    (``<run>``: ``run_name``, by default the folder's name, as ``vlp.run_name`` says); ``experts`` ("high",
    "low") writes <run>_high_noise[_comfy].safetensors ... instead; ``metadata``: more header keys (e.g. kohya's
    ``ss_learning_rate``). Returns the first LoRA file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = run_dir / "manifest.parquet"
    schemas.write_table(schemas.frame("manifest", rows), manifest, "manifest")
    run_name = run_name or run_dir.name
    meta = {
        "vlp.format": "1", "vlp.run_name": run_name, "vlp.profile": "tiny", "vlp.family": family,
        "vlp.base_model": "tiny@0123abcd", "vlp.rank": str(rank), "vlp.alpha": str(rank),
        "vlp.targets": json.dumps(["to_q", "to_k", "to_v", "to_out.0"]), "vlp.steps": str(steps),
        "vlp.manifest_sha256": sha256_file(manifest), "vlp.expert": "", **(metadata or {}),
    }
    g = torch.Generator().manual_seed(0)
    tensors = {"blocks.0.attn1.to_q.lora_A.weight": torch.randn(rank, 16, generator=g),
               "blocks.0.attn1.to_q.lora_B.weight": torch.randn(16, rank, generator=g)}
    stems = {"": run_name, "high": f"{run_name}_high_noise", "low": f"{run_name}_low_noise"}
    for expert in experts:
        stem = stems[expert]
        save_file(tensors, str(run_dir / f"{stem}.safetensors"), metadata={**meta, "vlp.expert": expert})
        save_file({f"diffusion_model.{k}": v for k, v in tensors.items()}, str(run_dir / f"{stem}_comfy.safetensors"),
                  metadata={**meta, "vlp.expert": expert})
    losses = losses or [1.0 / (1 + 0.3 * i) for i in range(steps)]
    (run_dir / "loss.csv").write_text("step,train_loss\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(losses)))
    evals = "".join(f"{i + 1},{v * 1.1}\n" for i, v in enumerate(losses) if (i + 1) % 5 == 0)
    (run_dir / "eval_loss.csv").write_text("step,eval_loss\n" + evals)
    (run_dir / "metrics.json").write_text(json.dumps({"final_train_loss": losses[-1], "steps": steps}))
    return run_dir / f"{stems[experts[0]]}.safetensors"
