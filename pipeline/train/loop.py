"""The training loop: flow matching on cached latents and prompt embeddings, LoRA through peft.

Never loads the VAE or the text encoder: a batch is latents [B, C, F, H, W] (normalised, as
the encode stage wrote them) and prompt embeddings padded with zeros to the profile's
``max_text_tokens``. Each step: t from the timestep sampler, noise from a generator seeded by
(seed, batch index), x_t = (1 - t) x0 + t noise, the model sees t * 1000 and is trained to
predict noise - x0 (mean squared error). Because the data order, the noise and the timesteps
are functions of the batch index, and checkpoints hold the LoRA weights, the optimizer, the
scheduler and the RNG state (dropout), a resumed run ends with the same LoRA as an
uninterrupted one. Ctrl-C (SIGINT) or SIGTERM while training checkpoints the last completed
step before the process exits (``StopSignals``), so a killed run loses at most one step.

Wrong data never reaches the optimizer: samples with a missing or damaged cache entry are
dropped before training (``prepare_data``), a loaded batch with NaN/Inf or absurd values is
skipped (``data.batch_problem``; its batch index is still consumed, so the data order and a
resume stay as they were), and a step whose loss is not finite makes no update. Both are logged
and counted in the metrics (``skipped_batches``, ``skipped_steps``).

The family's conditioning (I2V channels and image embeddings, TI2V's clean first frame and
per-token timesteps) comes from ``conditioning``; Wan 2.2 A14B trains one expert at a time
(``experts``), each a run of its own with its own timestep range, optimizer, checkpoints
(``checkpoints/high``, ``checkpoints/low``), loss files and LoRA files, loading only that
expert's transformer.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import importlib.util
import logging
import math
import resource
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

from pipeline import schemas
from pipeline.cache import CacheStore
from pipeline.fsutil import atomic_path, sha256_file, sha256_json, write_json
from pipeline.models.devices import resolve_device
from pipeline.models.transformer import build_on_meta, load_transformer, profile_transformer_config
from pipeline.profiles import Profile
from pipeline.train import checkpoint as ckpt
from pipeline.train.conditioning import T2V, Conditioning, TrainInputs
from pipeline.train.config import TrainConfig
from pipeline.train.data import (Batch, BatchPlan, CachedBatches, batch_problem, check_profile, held_out_flags,
                                 sample_repeats)
from pipeline.train.experts import Expert, all_lora_files, expert_label, experts_to_train
from pipeline.train.estimate import NO_PLAN, Estimate, MemoryPlan, ModelSize, video_tokens
from pipeline.train.lora import add_lora, lora_metadata, lora_state_dict, save_lora_files, trainable_parameters
from pipeline.train.memory import MemoryRuntime, apply_memory_plan
from pipeline.train.planner import choose_plan
from pipeline.train.precision import keep_condition_embedder_out_of_autocast
from pipeline.train.manifest import build_manifest, times_seen

log = logging.getLogger("train")

STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp32": torch.float32}
SAVE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Modules kept in their compute dtype under fp8 storage (precision-critical, or the trainable LoRA).
FP8_SKIP = ("lora_", "norm", "patch_embedding", "condition_embedder", "proj_out", "scale_shift_table")


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def flow_matching_loss(model, inputs: TrainInputs, t: torch.Tensor, noise: torch.Tensor, compute_dtype: torch.dtype,
                       conditioning: Conditioning = T2V) -> torch.Tensor:
    """MSE between the model's velocity and noise - x0 at x_t = (1 - t) x0 + t noise, the model
    conditioned as the family's pipeline conditions it (TI2V videos: the first frame left out)."""
    x0 = inputs.latents
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - tt) * x0 + tt * noise
    target = noise - x0
    kwargs, skip_first = conditioning.model_inputs(inputs, x_t, t, tuple(model.config.patch_size))
    kwargs = {k: (v if k == "timestep" else v.to(compute_dtype)) for k, v in kwargs.items()}
    autocast = compute_dtype != torch.float32
    with torch.autocast(x0.device.type, dtype=compute_dtype, enabled=autocast):
        pred = model(**kwargs, encoder_hidden_states=inputs.text.to(compute_dtype), return_dict=False)[0]
    if skip_first:
        pred, target = pred[:, :, 1:], target[:, :, 1:]
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def optimizer_is_8bit(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether ``make_optimizer`` gives bitsandbytes' AdamW8bit: when asked, or on ``auto`` with a
    GPU and bitsandbytes installed."""
    if cfg.optimizer == "adamw8bit":
        return True
    if cfg.optimizer == "auto" and device.type == "cuda":
        return importlib.util.find_spec("bitsandbytes") is not None
    return False


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device) -> tuple[torch.optim.Optimizer, bool]:
    """(optimizer, is 8-bit): bitsandbytes AdamW8bit when asked, or on ``auto`` with a GPU and bitsandbytes."""
    if optimizer_is_8bit(cfg, device):
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay), True
        except ImportError:
            raise RuntimeError("train.optimizer is adamw8bit but bitsandbytes is not installed (pip install bitsandbytes)") from None
    if cfg.optimizer == "auto" and device.type == "cuda":
        log.info("bitsandbytes not installed: using torch AdamW")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay), False


def resolve_storage(base_storage: str, device: torch.device) -> tuple[str, torch.dtype]:
    """(storage actually used, compute dtype): bf16 becomes fp32 on a CPU; fp8 computes in bf16 on a GPU."""
    if device.type != "cuda" and base_storage == "bf16":
        base_storage = "fp32"
    compute = STORAGE_DTYPES[base_storage] if device.type == "cuda" else torch.float32
    return base_storage, compute


def setup_lora_training(model, cfg: TrainConfig, storage: str, compute: torch.dtype):
    """Add the LoRA adapter (float32 weights), fp8 layerwise casting of the base, and keep the
    condition embedder out of autocast (``precision``). Gradient checkpointing and where the
    weights live come with the memory plan (``memory.apply_memory_plan``)."""
    lora_config = add_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, cfg.seed)
    if storage == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
                                       skip_modules_pattern=FP8_SKIP)
    keep_condition_embedder_out_of_autocast(model)
    model.train()
    return lora_config


def prepare_model(profile: Profile, cfg: TrainConfig, device: torch.device, expert: str = "transformer",
                  plan: MemoryPlan = NO_PLAN):
    """The profile's transformer (``expert``: which of a two-expert family's) set up for LoRA
    training under ``plan``: (model, LoRA config, storage, compute dtype, memory runtime)."""
    storage, compute = resolve_storage(cfg.base_storage, device)
    # fp8 or swapped blocks: load and set up in host memory, so the whole model never has to fit on the GPU
    on_host = storage == "fp8" or plan.blocks_to_swap > 0
    model = load_transformer(profile, dtype=compute, device="cpu" if on_host else device, expert=expert)
    lora_config = setup_lora_training(model, cfg, storage, compute)
    runtime = apply_memory_plan(model, plan, device, cfg.gradient_checkpointing)
    return model, lora_config, storage, compute, runtime


def model_size(profile: Profile, cfg: TrainConfig, expert: str = "transformer") -> ModelSize:
    """Parameter counts of the expert's transformer with this run's LoRA, without loading weights."""
    model = build_on_meta(profile_transformer_config(profile, expert))
    add_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, cfg.seed)
    return ModelSize.of(model)


def budget_gib(cfg: TrainConfig, device: torch.device) -> float | None:
    """The memory to plan for: ``train.vram_budget_gib``, else the GPU's free memory (None on a CPU)."""
    if cfg.vram_budget_gib is not None:
        return float(cfg.vram_budget_gib)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    return None


def plan_run(cfg: TrainConfig, profile: Profile, expert: Expert, tokens: int, device: torch.device, storage: str,
             optimizer_8bit: bool) -> tuple[MemoryPlan, Estimate, float | None]:
    """The memory plan for the largest bucket (``tokens`` a sample), before any weights load."""
    size = model_size(profile, cfg, expert.model)
    wanted = cfg.wanted_memory()
    if wanted.blocks_to_swap is not None and wanted.blocks_to_swap > size.num_layers:
        raise ValueError(f"train.blocks_to_swap: {wanted.blocks_to_swap} is more than the {size.num_layers} blocks "
                         f"of {profile.name}")
    budget = budget_gib(cfg, device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    what = f"{profile.name}" + (f" ({expert.name}-noise expert)" if expert.name else "")
    plan, est = choose_plan(size, tokens, budget, wanted, text_tokens=profile.max_text_tokens,
                            batch_size=cfg.batch_size, storage=storage, checkpointing=cfg.gradient_checkpointing,
                            optimizer_8bit=optimizer_8bit, gpu=gpu, what=what)
    return plan, est, budget


def micro_step(model, inputs: TrainInputs, sampler, generator: torch.Generator, compute: torch.dtype,
               grad_accum: int = 1, conditioning: Conditioning = T2V) -> float:
    """Forward and backward of one batch (noise and timesteps from ``generator``); returns the loss."""
    latents = inputs.latents
    t = sampler.sample(latents.shape[0], generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    loss = flow_matching_loss(model, inputs, t, noise, compute, conditioning)
    (loss / grad_accum).backward()
    return loss.item()


def optimizer_step(params: list[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float) -> None:
    if max_grad_norm and max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def skip_update(optimizer, scheduler) -> None:
    """A step that must not change the LoRA (its loss is not finite, or every batch was skipped): the
    gradients are dropped, the optimizer does not step; the LR schedule moves on with the step count."""
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def _load_checked(loader: CachedBatches, rows: tuple[int, ...]) -> tuple[TrainInputs, str | None]:
    """A batch from the cache and why it must not be trained on (None when it may)."""
    inputs = loader.load(rows)
    return inputs, batch_problem(inputs)


def _prefetch(batches: Iterator[Batch], loader: CachedBatches) -> Iterator[tuple[Batch, TrainInputs, str | None]]:
    """Load (and check) the next batch from the cache in a thread while the current one trains."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        batch = next(batches)
        future = pool.submit(_load_checked, loader, batch.rows)
        while True:
            nxt = next(batches)
            nxt_future = pool.submit(_load_checked, loader, nxt.rows)
            yield batch, *future.result()
            batch, future = nxt, nxt_future


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM while the training loop runs. The handler only records the signal;
    the loop, once its current step is done, checkpoints it and raises :meth:`exception`
    (KeyboardInterrupt, or SystemExit(128 + 15) for SIGTERM). A second signal stops at once.
    Installed only from the main thread (Python allows no other); the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise self.exception(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def exception(self, signum: int | None = None) -> BaseException:
        signum = self.signum if signum is None else signum
        return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + int(signum))


@torch.no_grad()
def evaluate(model, loader: CachedBatches, rows: list[int], sample_ids: list[str], timesteps: list[float],
             seed: int, device: torch.device, compute_dtype: torch.dtype, conditioning: Conditioning = T2V,
             t_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Mean loss over ``rows`` at fixed timesteps with fixed noise per sample (comparable across steps and runs).
    ``t_range``: an expert's range; the timesteps are mapped into it (t -> lo + (hi - lo) t)."""
    if not rows:
        return math.nan
    was_training = model.training
    model.eval()
    lo, hi = t_range
    total = 0.0
    for r in rows:
        inputs = loader.load([r]).to(device)
        g = torch.Generator(device).manual_seed(_seed("eval", seed, sample_ids[r]))
        noise = torch.randn(inputs.latents.shape, generator=g, device=device)
        for t in timesteps:
            tt = torch.full((1,), lo + (hi - lo) * float(t), device=device)
            total += flow_matching_loss(model, inputs, tt, noise, compute_dtype, conditioning).item()
    model.train(was_training)
    return total / (len(rows) * len(timesteps))


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what was measured): CUDA max allocated on a GPU, the process's max RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_max_rss"


def _write_csv(path: Path, header: tuple[str, str], rows: list[tuple]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@dataclass
class RunData:
    """What every expert of a run trains and evaluates on."""

    samples: pl.DataFrame
    loader: CachedBatches
    held: list[bool]
    train_rows: list[int]
    eval_rows: list[int]
    plan: BatchPlan
    sample_ids: list[str]

    @property
    def train_samples(self) -> pl.DataFrame:
        return self.samples[self.train_rows]


def prepare_data(cfg: TrainConfig, profile: Profile, samples: pl.DataFrame, store: CacheStore,
                 conditioning: Conditioning) -> RunData:
    """Drop what cannot be trained (with a logged reason), split off the held-out samples, plan the batches."""
    if not conditioning.trains_images:
        n_images = int((samples["kind"] == "image").sum())
        if n_images:
            log.warning("%d image sample(s) skipped: the %s family is conditioned on the first frame, so a one-frame "
                        "sample would be its own condition", n_images, profile.family)
            samples = samples.filter(pl.col("kind") != "image")
    flags = {"cond": conditioning.needs_cond, "image": conditioning.image_embeds}
    loader = CachedBatches(store, samples, profile.max_text_tokens, **flags)
    missing = loader.missing()
    for r, why in sorted(missing.items()):
        log.warning("%s: sample %s skipped (re-run the encode stage)", why, samples["sample_id"][r])
    if cfg.verify_cache:
        log.info("verifying the cache entries of %d samples (sha256; train.verify_cache)", samples.height - len(missing))
    damaged = {r: why for r, why in loader.damaged(cfg.verify_cache).items() if r not in missing}
    for r, why in sorted(damaged.items()):
        log.warning("%s: sample %s skipped (`vlp cache verify --delete-bad`, then the encode stage, rewrites it)",
                    why, samples["sample_id"][r])
    dropped = set(missing) | set(damaged)
    if dropped:
        samples = samples[[i for i in range(samples.height) if i not in dropped]]
        loader = CachedBatches(store, samples, profile.max_text_tokens, **flags)
    if samples.height == 0:
        raise ValueError("no samples to train on (encoded.parquet is empty or every cache entry is missing or damaged)")

    held = held_out_flags(samples, cfg.held_out_fraction, cfg.held_out_clips, cfg.held_out_by)
    train_rows = [i for i, h in enumerate(held) if not h]
    eval_rows = [i for i, h in enumerate(held) if h][: cfg.eval_max_samples]
    train_samples = samples[train_rows]
    plan = BatchPlan(train_samples, sample_repeats(train_samples, cfg.repeats, cfg.dataset_repeats),
                     cfg.batch_size, cfg.seed, cfg.image_batch_fraction)
    log.info("%d training samples (%s), %d held out; buckets: %s", len(train_rows),
             ", ".join(f"{k}: {plan.batches_per_epoch[k]} batches/epoch" for k in plan.kinds), len(held) - len(train_rows),
             ", ".join(f"{b[0]} {b[1]}x{b[2]}x{b[3]}" for b in sorted(set(plan.buckets))))
    return RunData(samples, loader, held, train_rows, eval_rows, plan, samples["sample_id"].to_list())


def clear_other_lora_files(out_dir: Path, experts: list[Expert]) -> None:
    """Remove LoRA files of another family or expert choice from the run folder: they were not
    trained on this run's manifest (``vlp audit`` would report them as changed)."""
    keep = {name for e in experts for name in e.files}
    for name in sorted(all_lora_files() - keep):
        if (out_dir / name).exists():
            (out_dir / name).unlink()
            log.info("%s: removed (not written by this run's family / train.expert; use train.expert: both or "
                     "another run_name to keep both experts)", out_dir / name)


def train(cfg: TrainConfig, profile: Profile, samples: pl.DataFrame, store: CacheStore, out_dir: str | Path,
          on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the LoRA(s) on ``samples`` (from ``data.build_samples``); write the run folder; return the metrics.

    ``on_step(step, loss)`` is called after every optimizer step (after any checkpoint of that step; the
    loss is NaN for a step that made no update); with two experts trained in turn the second one's steps
    count on from ``train.steps``.
    """
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    check_profile(samples, profile)
    experts = experts_to_train(profile, cfg.expert, cfg.min_t, cfg.max_t)
    conditioning = Conditioning.of(profile)
    data = prepare_data(cfg, profile, samples, store, conditioning)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_other_lora_files(out_dir, experts)

    # the manifest is a function of the samples and the batch plan: the same bytes for every expert
    seen = times_seen(data.plan, cfg.steps * cfg.grad_accum, data.train_rows, data.samples.height)
    manifest = build_manifest(data.samples, [n * len(experts) for n in seen], data.held, profile.family,
                              expert_label(experts))
    manifest_path = out_dir / "manifest.parquet"

    def save_manifest() -> str:
        schemas.write_table(manifest, manifest_path, "manifest")
        return sha256_file(manifest_path)

    results, curves = {}, Curves(out_dir)
    for i, expert in enumerate(experts):
        if expert.name:
            log.info("expert %s (%s): t in [%.4g, %.4g%s", expert.name, expert.model, expert.min_t, expert.max_t,
                     ")" if expert.max_exclusive else "]")
        step_cb = None
        if on_step is not None:
            step_cb = (lambda offset: lambda step, loss: on_step(offset + step, loss))(i * cfg.steps)
        results[expert.name] = train_expert(cfg, profile, expert, data, conditioning, out_dir, device, save_manifest,
                                            curves, i * cfg.steps, step_cb)
    if len(experts) == 1 and not experts[0].name:
        metrics = {"family": profile.family, **results[""]}
    else:
        metrics = {"family": profile.family, "expert": expert_label(experts), **results}
    write_json(out_dir / "metrics.json", metrics)
    return metrics


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
                _write_csv(path, ("step", name, "expert"), self.done[name] + [(offset + s, v, expert.name) for s, v in rows])
            else:
                _write_csv(path, ("step", name), rows)

    def finish(self, expert: Expert, offset: int, train_losses: list[tuple], eval_losses: list[tuple]) -> None:
        self.write(expert, offset, train_losses, eval_losses)
        if expert.name:
            self.done["train_loss"] += [(offset + s, v, expert.name) for s, v in train_losses]
            self.done["eval_loss"] += [(offset + s, v, expert.name) for s, v in eval_losses]


def train_expert(cfg: TrainConfig, profile: Profile, expert: Expert, data: RunData, conditioning: Conditioning,
                 out_dir: Path, device: torch.device, save_manifest: Callable[[], str], curves: Curves,
                 step_offset: int = 0, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train one transformer's LoRA (resuming from its checkpoints), write its LoRA files and loss curves; its metrics."""
    loader, sample_ids = data.loader, data.sample_ids
    storage, _ = resolve_storage(cfg.base_storage, device)
    biggest = max(data.train_samples["latent_shape"].to_list(), key=lambda s: video_tokens(s))
    plan, est, budget = plan_run(cfg, profile, expert, video_tokens(biggest), device, storage,
                                 optimizer_is_8bit(cfg, device))
    _log_plan(plan, est, budget, biggest, device)
    model, lora_config, storage, compute, memory = prepare_model(profile, cfg, device, expert.model, plan)
    params = trainable_parameters(model)
    optimizer, is_8bit = make_optimizer(cfg, list(params.values()), device)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.steps)

    tag = (expert.name,) if expert.name else ()  # seeds of a single-expert run stay as they were
    fingerprint = sha256_json({"settings": cfg.training_settings(), "profile": profile.name, "repo": profile.repo,
                               "storage": storage, **({"expert": expert.name} if expert.name else {}),
                               "samples": [sample_ids, data.samples["latent_key"].to_list(),
                                           data.samples["text_key"].to_list(), data.held]})
    ckpt_dir = out_dir / "checkpoints" / expert.name if expert.name else out_dir / "checkpoints"
    start, train_losses, eval_losses, resumed_from = 0, [], [], None
    skipped = {"skipped_steps": 0, "skipped_batches": 0}
    for leftover in ckpt.remove_leftovers(ckpt_dir):
        log.info("%s: removed (left by a checkpoint save that was killed)", leftover)
    found = ckpt.resume(ckpt_dir, fingerprint, params, optimizer, scheduler)
    if found is not None:
        state = found["state"]
        start, resumed_from = state["step"], state["step"]
        train_losses = [tuple(x) for x in state["train_losses"]]
        eval_losses = [tuple(x) for x in state["eval_losses"]]
        skipped = {k: int(state.get(k, 0)) for k in skipped}
        log.info("resuming from %s (step %d of %d)", found["path"], start, cfg.steps)
    else:
        if n := ckpt.clear(ckpt_dir):
            log.info("%s: removed %d checkpoint(s) that cannot be resumed (another configuration, or damaged)", ckpt_dir, n)
        torch.manual_seed(_seed("global", cfg.seed, *tag))
        if device.type == "cuda":
            torch.cuda.manual_seed_all(_seed("global", cfg.seed, *tag))

    sampler = cfg.sampler(expert.min_t, expert.max_t, expert.max_exclusive)
    eval_range = (expert.min_t, expert.max_t) if expert.name else (0.0, 1.0)

    def run_eval(step: int) -> None:
        if data.eval_rows and not any(s == step for s, _ in eval_losses):
            value = evaluate(model, loader, data.eval_rows, sample_ids, cfg.eval_timesteps, cfg.eval_seed, device, compute,
                             conditioning, eval_range)
            eval_losses.append((step, value))
            log.info("step %d: eval loss %.5f", step, value)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if start == 0:
        run_eval(0)

    def save(done: int) -> Path:
        path = ckpt.save_checkpoint(ckpt_dir, done, params, optimizer, scheduler,
                                    {"fingerprint": fingerprint, "train_losses": train_losses, "eval_losses": eval_losses,
                                     "batches_consumed": done * cfg.grad_accum, **skipped}, keep=cfg.keep_checkpoints)
        curves.write(expert, step_offset, train_losses, eval_losses)  # follow a long run
        return path

    batches = _prefetch(data.plan.iterate(start * cfg.grad_accum), loader)
    step_times = []
    bar = tqdm(range(start, cfg.steps), desc=f"train {expert.name}".rstrip(), unit="step", initial=start, total=cfg.steps,
               disable=not cfg.progress)
    with StopSignals() as stop:
        for step in bar:
            t0 = time.perf_counter()
            done = step + 1
            micro_losses = []
            for _ in range(cfg.grad_accum):
                batch, inputs, problem = next(batches)
                if problem:  # the batch index is consumed all the same: the data order stays as planned
                    log.warning("step %d: batch %d skipped (samples %s): %s", done, batch.index, loader.describe(batch.rows),
                                problem)
                    skipped["skipped_batches"] += 1
                    continue
                inputs = inputs.to(device, non_blocking=True)
                g = torch.Generator(device).manual_seed(_seed("batch", cfg.seed, *tag, batch.index))
                micro_losses.append(micro_step(model, inputs, sampler, g, compute, cfg.grad_accum, conditioning))
            value = sum(micro_losses) / len(micro_losses) if micro_losses else math.nan
            if math.isfinite(value):
                optimizer_step(list(params.values()), optimizer, scheduler, cfg.max_grad_norm)
                train_losses.append((done, value))
            else:
                skip_update(optimizer, scheduler)
                skipped["skipped_steps"] += 1
                log.warning("step %d: %s; no update this step", done,
                            f"loss is {value}" if micro_losses else "every batch was skipped")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
            if cfg.eval_every > 0 and done % cfg.eval_every == 0:
                run_eval(done)
            saved = (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0) or done == cfg.steps
            if saved:
                save(done)
            if on_step is not None:
                on_step(done, value)
            if stop.signum is not None:
                path = ckpt_dir / f"{ckpt.PREFIX}{done:06d}" if saved else save(done)
                log.warning("%s after step %d: checkpoint %s written; run again to resume from it", stop.name, done, path)
                raise stop.exception()
    run_eval(cfg.steps)
    peak_gib, peak_kind = peak_memory(device)
    if device.type == "cuda":
        log.info("measured peak memory %.2f GiB allocated, %.2f GiB reserved; estimate was %.2f GiB", peak_gib,
                 torch.cuda.max_memory_reserved(device) / 2**30, est.peak_gib)
    else:
        log.info("measured peak memory %.2f GiB (%s)", peak_gib, peak_kind)

    # outputs: the manifest first (its hash goes into the LoRA metadata)
    meta = lora_metadata(run_name=cfg.run_name, profile=profile.name, family=profile.family,
                         base_model=profile.repo or "tiny", rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets,
                         steps=cfg.steps, manifest_sha256=save_manifest(), expert=expert.name)
    save_lora_files(out_dir, lora_state_dict(model), lora_config, meta, SAVE_DTYPES[cfg.save_dtype], *expert.files)
    curves.finish(expert, step_offset, train_losses, eval_losses)
    metrics = _metrics(cfg, train_losses, eval_losses, est, peak_gib, peak_kind, step_times, device,
                       len(data.train_rows), len(data.held) - len(data.train_rows),
                       sum(p.numel() for p in params.values()), resumed_from)
    metrics.update(skipped)
    metrics.update(_memory_metrics(memory, budget, device))
    del model, params, optimizer, scheduler, memory  # the next expert loads into the memory this one held
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return metrics


def _log_plan(plan: MemoryPlan, est: Estimate, budget: float | None, biggest, device: torch.device) -> None:
    if device.type != "cuda" and budget is None:
        log.info("CPU run (float32 compute): %s, no GPU memory to plan for", plan.describe())
        return
    where = f"a budget of {budget:.3g} GiB" if budget is not None else "no budget"
    log.info("memory plan for the largest bucket (latents %s) and %s: %s; %s", biggest, where, plan.describe(),
             est.describe())


def _memory_metrics(memory: MemoryRuntime, budget: float | None, device: torch.device) -> dict:
    plan = memory.plan
    out = {"memory_plan": plan.describe(memory.num_layers), "blocks_to_swap": plan.blocks_to_swap,
           "offload_activations": plan.offload_activations, "ffn_chunks": plan.ffn_chunks,
           "vram_budget_gib": budget}
    if device.type == "cuda":
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
    return {**out, **memory.stats()}


def _metrics(cfg, train_losses, eval_losses, est: Estimate, peak_gib, peak_kind, step_times, device,
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
