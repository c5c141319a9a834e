"""Checkpoints for resuming a run: tensors in safetensors, everything else in JSON (no pickle).

``<run>/checkpoints/step-000040/`` holds
- ``trainable.safetensors``: the trainable (LoRA) parameters by full module path (not named
  ``lora.safetensors``, so nothing mistakes a checkpoint for a finished LoRA);
- ``optimizer.safetensors``: every tensor of the optimizer state, flattened
  (``state.<param index>.<name>``), plus the RNG states (``rng.torch``, ``rng.cuda.<i>``);
- ``state.json``: step, data position, the optimizer's non-tensor state and param groups, the
  LR scheduler's state, the loss history, and the run's fingerprint (a checkpoint of another
  configuration is never resumed).

A checkpoint folder is written under a temporary name and renamed when complete, so a kill
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.fsutil import write_json

log = logging.getLogger("train")

PREFIX = "step-"


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON structure) of ``optimizer.state_dict()``."""
    sd = optimizer.state_dict()
    tensors, state = {}, {}
    for pid, entry in sd["state"].items():
        plain = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[name] = value
        state[str(pid)] = plain
    return tensors, {"state": state, "param_groups": sd["param_groups"]}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    """The inverse of :func:`optimizer_to_flat`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {int(pid): dict(plain) for pid, plain in structure["state"].items()}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": structure["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(folder: str | Path, step: int, params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, scheduler, state: dict, keep: int = 2) -> Path:
    """Write ``folder/step-<step>`` and keep only the newest ``keep`` checkpoints."""
    folder = Path(folder)
    final = folder / f"{PREFIX}{step:06d}"
    tmp = folder / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))
    opt_tensors, opt_structure = optimizer_to_flat(optimizer)
    save_file({**opt_tensors, **rng_tensors()}, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", {**state, "step": step, "optimizer": opt_structure, "scheduler": scheduler.state_dict()})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists())


def load_latest(folder: str | Path, fingerprint: str) -> dict | None:
    """The newest checkpoint of this configuration as {"state", "params", "optimizer_tensors", "path"}, or None."""
    for path in reversed(list_checkpoints(folder)):
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
            if state.get("fingerprint") != fingerprint:
                log.info("%s: checkpoint of another configuration, not resumed", path)
                return None
            return {"state": state, "params": load_file(str(path / "trainable.safetensors")),
                    "optimizer_tensors": load_file(str(path / "optimizer.safetensors")), "path": path}
        except (OSError, ValueError, KeyError) as e:  # damaged checkpoint: try the one before
            log.warning("%s: unreadable checkpoint (%s), trying an older one", path, e)
    return None


def clear(folder: str | Path) -> int:
    """Remove every checkpoint (and leftover temporary folder) in ``folder``; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    gone = [p for p in folder.iterdir() if p.is_dir() and (p.name.startswith(PREFIX) or p.name.startswith(f".tmp-{PREFIX}"))]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return len(gone)


def restore(ckpt: dict, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Load a checkpoint from :func:`load_latest` into the run; returns its state dict."""
    saved = ckpt["params"]
    if set(saved) != set(params):
        raise ValueError(f"{ckpt['path']}: LoRA parameters do not match the model")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))
    state = ckpt["state"]
    optimizer.load_state_dict(optimizer_from_flat(ckpt["optimizer_tensors"], state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(ckpt["optimizer_tensors"])
    return state
