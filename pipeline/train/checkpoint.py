"""Checkpoints for resuming a run: tensors in safetensors, everything else in JSON (no pickle).

``<run>/checkpoints/step-000040/`` holds
- ``trainable.safetensors``: the trainable (LoRA) parameters by full module path (not named
  after the run like the LoRA files, so nothing mistakes a checkpoint for a finished LoRA);
- ``optimizer.safetensors``: every tensor of the optimizer state, flattened
  (``state.<param index>.<name>``), plus the RNG states (``rng.torch``, ``rng.cuda.<i>``);
- ``state.json``: step, data position, the optimizer's non-tensor state and param groups, the
  LR scheduler's state, the loss history, the run's fingerprint (a checkpoint of another
  configuration is never resumed) and the sha256 of both tensor files.

A checkpoint folder is written under a temporary name and renamed when complete, so a kill
mid-save leaves the previous checkpoint as the latest (the leftover ``.tmp-step-*`` folder is
removed by :func:`remove_leftovers` at the start of the next run). A damaged checkpoint (invalid
``state.json``, a tensor file that is truncated, flipped or does not match the model) is never
half-restored: :func:`resume` checks everything before it touches the model, the optimizer or the
scheduler, logs one WARNING naming the checkpoint, and falls back to the one before.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.core.errors import one_line
from pipeline.core.fs import sha256_file, write_json

log = logging.getLogger("train")

PREFIX = "step-"
TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors")
# Optimizer state tensors shaped like their parameter: torch AdamW's moments, bitsandbytes' states.
PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "state1", "state2")
STATE_KEYS = {"step": int, "fingerprint": str, "optimizer": dict, "scheduler": dict, "train_losses": list,
              "eval_losses": list}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message is one line naming its folder and why."""


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: damaged checkpoint ({why})")


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
    """Write ``folder/step-<step>`` and keep only the newest ``keep`` checkpoints. Checkpoints after
    ``step`` go: a run saving ``step`` resumed before them, so they were skipped as damaged."""
    folder = Path(folder)
    final = folder / f"{PREFIX}{step:06d}"
    tmp = folder / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))
    opt_tensors, opt_structure = optimizer_to_flat(optimizer)
    save_file({**opt_tensors, **rng_tensors()}, str(tmp / "optimizer.safetensors"))
    files = {name: sha256_file(tmp / name) for name in TENSOR_FILES}
    write_json(tmp / "state.json", {**state, "step": step, "optimizer": opt_structure, "scheduler": scheduler.state_dict(),
                                    "files": files})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for later in (p for p in list_checkpoints(folder) if p.name > final.name):
        shutil.rmtree(later, ignore_errors=True)
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


def read_state(path: Path) -> dict:
    """A checkpoint's ``state.json``, with the keys a resume needs; raises :class:`CheckpointError`."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _damaged(path, f"state.json: {one_line(e)}") from None
    if not isinstance(state, dict):
        raise _damaged(path, "state.json is not a JSON object")
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise _damaged(path, f"state.json: '{key}' missing or not a {kind.__name__}")
    if state["step"] < 0:
        raise _damaged(path, f"state.json: step {state['step']}")
    return state


def read_tensors(path: Path, state: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{"params", "optimizer_tensors"} of a checkpoint, each file checked against the sha256 in
    ``state.json`` (checkpoints written before the hashes were recorded are only parsed)."""
    hashes = state.get("files") or {}
    out = {}
    for name, field in zip(TENSOR_FILES, ("params", "optimizer_tensors")):
        file = path / name
        try:
            if name in hashes and sha256_file(file) != hashes[name]:
                raise _damaged(path, f"{name} does not match its sha256 (corrupted bytes)")
            out[field] = load_file(str(file))
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises several types for a damaged file
            raise _damaged(path, f"{name}: {one_line(e)}") from None
    return out


def candidates(folder: str | Path, fingerprint: str, max_step: int | None = None) -> Iterator[dict]:
    """Readable checkpoints of this configuration, newest first, each {"state", "params",
    "optimizer_tensors", "path"}. A damaged one is skipped with a WARNING naming it, one after
    ``max_step`` (the run's ``train.steps`` was lowered) with an INFO line; at a checkpoint of
    another configuration the search stops (the run starts over)."""
    for path in reversed(list_checkpoints(folder)):
        if max_step is not None and checkpoint_step(path) > max_step:
            log.info("%s: after train.steps (%d), not resumed", path, max_step)
            continue
        try:
            state = read_state(path)
            if state["fingerprint"] != fingerprint:
                log.info("%s: checkpoint of another configuration, not resumed", path)
                return
            yield {"state": state, **read_tensors(path, state), "path": path}
        except CheckpointError as e:
            log.warning("%s; trying the previous checkpoint", e)


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint folder's name (``step-000040`` -> 40)."""
    return int(path.name.removeprefix(PREFIX))


def load_latest(folder: str | Path, fingerprint: str) -> dict | None:
    """The newest readable checkpoint of this configuration as {"state", "params", "optimizer_tensors", "path"}, or None."""
    return next(candidates(folder, fingerprint), None)


def resume(folder: str | Path, fingerprint: str, params: dict[str, torch.nn.Parameter],
           optimizer: torch.optim.Optimizer, scheduler, max_step: int | None = None) -> dict | None:
    """Restore the newest sound checkpoint of this configuration into the run and return it (as
    :func:`load_latest` does), or None. One that fails to load or to match the model is skipped with
    a WARNING naming it, leaving the run untouched, and the one before is tried."""
    for found in candidates(folder, fingerprint, max_step):
        try:
            restore(found, params, optimizer, scheduler)
            return found
        except CheckpointError as e:
            log.warning("%s; trying the previous checkpoint", e)
    return None


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove the ``.tmp-step-*`` folders of saves that were killed (they are never resumed); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(f".tmp-{PREFIX}"))
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


STALE = "stale"  # checkpoints/stale/: checkpoints this run does not resume, kept for the user


def set_aside(folder: str | Path, after_step: int = -1, remove: bool = False) -> list[tuple[Path, Path | None]]:
    """Move every checkpoint of ``folder`` after ``after_step`` (all of them by default) into
    ``folder/stale/`` (a name that is free: ``step-000040``, ``step-000040.2``...), or delete it
    with ``remove``, each with a WARNING naming it: a checkpoint this run does not resume (another
    configuration, damaged, or after the step it resumes from) is never deleted silently, and a
    later save cannot overwrite it. Returns (old path, new path or None) pairs."""
    folder = Path(folder)
    moved: list[tuple[Path, Path | None]] = []
    for path in list_checkpoints(folder) + [p for p in _incomplete(folder)]:
        if path in _incomplete(folder) or checkpoint_step(path) > after_step:
            if remove:
                shutil.rmtree(path, ignore_errors=True)
                log.warning("%s: not resumed by this run; removed (train.remove_stale_checkpoints)", path)
                moved.append((path, None))
                continue
            (folder / STALE).mkdir(parents=True, exist_ok=True)
            target, n = folder / STALE / path.name, 1
            while target.exists():
                n += 1
                target = folder / STALE / f"{path.name}.{n}"
            os.replace(path, target)
            log.warning("%s: not resumed by this run; kept as %s (delete it by hand, or set "
                        "train.remove_stale_checkpoints: true)", path, target)
            moved.append((path, target))
    return moved


def _incomplete(folder: Path) -> list[Path]:
    """Checkpoint folders without a state.json (a damaged save, not a killed one: those are ``.tmp-``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not (p / "state.json").exists())


def _check_params(path: Path, saved: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> None:
    """The saved trainable tensors are exactly the run's parameters (names, shapes) and finite."""
    if set(saved) != set(params):
        raise CheckpointError(f"{path}: LoRA parameters do not match the model")
    for name, p in params.items():
        t = saved[name]
        if tuple(t.shape) != tuple(p.shape):
            raise _damaged(path, f"parameter '{name}' is {list(t.shape)}, the model's {list(p.shape)}")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise _damaged(path, f"parameter '{name}' is not finite floating point")


def _check_optimizer(path: Path, sd: dict, optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer state refers to the run's parameters, in order, with tensors of their shapes."""
    saved_ids = [i for g in sd["param_groups"] for i in g["params"]]
    current = [p for g in optimizer.param_groups for p in g["params"]]
    if len(sd["param_groups"]) != len(optimizer.param_groups) or len(saved_ids) != len(current):
        raise _damaged(path, "optimizer state does not match the run's parameter groups")
    by_id = dict(zip(saved_ids, current))
    for pid, entry in sd["state"].items():
        if pid not in by_id:
            raise _damaged(path, f"optimizer state of unknown parameter {pid}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and name in PARAM_SHAPED_STATE and value.shape != by_id[pid].shape:
                raise _damaged(path, f"optimizer '{name}' of parameter {pid} is {list(value.shape)}, "
                                     f"the parameter {list(by_id[pid].shape)}")
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise _damaged(path, f"optimizer '{name}' of parameter {pid} is not finite")


def _check_rng(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    rng = tensors.get("rng.torch")
    now = torch.get_rng_state()
    if rng is None or rng.dtype != now.dtype or rng.shape != now.shape:
        raise _damaged(path, "optimizer.safetensors: no valid 'rng.torch' state")


def restore(ckpt: dict, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Load a checkpoint from :func:`load_latest` into the run; returns its state dict. Everything is
    checked first and the optimizer and scheduler are rolled back if they refuse their state, so a
    :class:`CheckpointError` leaves the run as it was."""
    path, state, tensors = ckpt["path"], ckpt["state"], ckpt["optimizer_tensors"]
    _check_params(path, ckpt["params"], params)
    try:
        opt_sd = optimizer_from_flat(tensors, state["optimizer"])
        _check_optimizer(path, opt_sd, optimizer)
    except CheckpointError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a damaged structure in state.json
        raise _damaged(path, f"optimizer state: {one_line(e)}") from None
    _check_rng(path, tensors)
    if set(state["scheduler"]) != set(scheduler.state_dict()):
        raise _damaged(path, "scheduler state does not match the run's scheduler")
    opt_before, sched_before = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict())
    try:
        optimizer.load_state_dict(opt_sd)
        scheduler.load_state_dict(state["scheduler"])
    except Exception as e:  # torch raises several types for a state it cannot take
        optimizer.load_state_dict(opt_before)
        scheduler.load_state_dict(sched_before)
        raise _damaged(path, f"optimizer or scheduler state: {one_line(e)}") from None
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ckpt["params"][name].to(p.device, p.dtype))
    restore_rng(tensors)
    return state
