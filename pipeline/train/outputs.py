"""What a run writes beside its LoRA files: the loss curves (``loss.csv``, ``eval_loss.csv``, the DVC
plots) and the metrics (``metrics.json``: losses, the memory plan, the estimate against the measured
peak and s/step)."""

from __future__ import annotations

import csv
import logging
import re
import resource
import statistics
from pathlib import Path

import torch

from pipeline.core.fs import atomic_path
from pipeline.train.estimate import (
    Estimate,
)
from pipeline.train.experts import (
    Expert,
    all_lora_files,
)
from pipeline.train.memory import MemoryRuntime

log = logging.getLogger("train")


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured): CUDA max allocated on a GPU, the process's max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_max_rss"


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def clear_other_lora_files(out_dir: Path, experts: list[Expert], run_name: str) -> None:
    """Remove LoRA files of another family or expert choice from the run folder: they were not
    trained on this run's manifest (``vlp audit`` would report them as changed)."""
    keep = {name for e in experts for name in e.files(run_name)}
    for name in sorted(all_lora_files(run_name) - keep):
        if (out_dir / name).exists():
            (out_dir / name).unlink()
            log.info("%s: removed (not written by this run's family / train.expert; use train.expert: both or "
                     "another run_name to keep both experts)", out_dir / name)


SNAPSHOTS = "snapshots"  # <run>/snapshots/: the LoRA files written every train.save_every steps


def clear_snapshots(folder: Path, run_name: str, expert: Expert, after_step: int) -> None:
    """Remove the expert's snapshots after ``after_step`` (the step the run starts from): they were
    written by a run this one does not continue (another configuration, or after the checkpoint it
    resumes), and this run writes its own again."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(f"{run_name}-step*.safetensors")):
        m = re.match(r"\d+", path.name.removeprefix(f"{run_name}-step"))
        if m is None or path.name not in expert.snapshot_files(run_name, int(m.group())):
            continue
        if int(m.group()) > after_step:
            path.unlink()
            log.warning("%s: removed (a snapshot of a run this one does not continue; its own are written again)", path)


class Curves:
    """``loss.csv`` / ``eval_loss.csv`` of a run (``dvc plots``). With two experts trained in turn the
    curves run on: the second expert's steps count from ``train.steps``, and a third column names the
    expert of each row."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.done: dict[str, list[tuple]] = {"train_loss": [], "eval_loss": []}  # rows of the experts already trained

    def write(self, expert: Expert, offset: int, train_losses: list[tuple], eval_losses: list[tuple]) -> None:
        for name, rows in (("train_loss", train_losses), ("eval_loss", eval_losses)):
            path = self.out_dir / ("loss.csv" if name == "train_loss" else "eval_loss.csv")
            if expert.name:
                write_csv(path, ("step", name, "expert"), self.done[name] + [(offset + s, v, expert.name) for s, v in rows])
            else:
                write_csv(path, ("step", name), rows)

    def finish(self, expert: Expert, offset: int, train_losses: list[tuple], eval_losses: list[tuple]) -> None:
        self.write(expert, offset, train_losses, eval_losses)
        if expert.name:
            self.done["train_loss"] += [(offset + s, v, expert.name) for s, v in train_losses]
            self.done["eval_loss"] += [(offset + s, v, expert.name) for s, v in eval_losses]


def memory_metrics(memory: MemoryRuntime, budget: float | None, device: torch.device) -> dict:
    plan = memory.plan
    out = {"memory_plan": plan.describe(memory.num_layers), "blocks_to_swap": plan.blocks_to_swap,
           "offload_activations": plan.offload_activations, "ffn_chunks": plan.ffn_chunks,
           "vram_budget_gib": budget}
    if device.type == "cuda":
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
    return {**out, **memory.stats()}


# what varies by machine (seconds, memory, the device's name): data/timings/train.json, not the run's metrics.json
# nor data/metrics/train.json (``core.timings``)
TIMINGS = frozenset({"step_s_median", "peak_memory_gib", "peak_reserved_gib", "peak_memory_kind", "device",
                     "estimate_step_s"})


def run_metrics(cfg, train_losses, eval_losses, est: Estimate, peak_gib, peak_kind, step_times, device,
             n_train, n_held, n_lora, resumed_from) -> dict:
    tail = [v for _, v in train_losses[-10:]]
    steady = step_times[1:] or step_times
    return {
        "steps": cfg.steps,
        "train_loss_last10": round(sum(tail) / len(tail), 6) if tail else None,
        "eval_loss_first": round(eval_losses[0][1], 6) if eval_losses else None,
        "eval_loss_final": round(eval_losses[-1][1], 6) if eval_losses else None,
        "train_samples": n_train,
        "held_out_samples": n_held,
        "lora_params": n_lora,
        "estimate_peak_gib": round(est.peak_gib, 6),
        "estimate_step_s": round(est.step_s, 3),
        "peak_memory_gib": round(peak_gib, 3),
        "peak_memory_kind": peak_kind,
        "step_s_median": round(statistics.median(steady), 4) if steady else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "resumed_from_step": resumed_from,
    }
