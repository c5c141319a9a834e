"""The training loop: flow matching on cached latents and prompt embeddings, LoRA through peft.

Never loads the VAE or the text encoder: a batch is latents [B, C, F, H, W] (normalised, as
the encode stage wrote them) and prompt embeddings padded with zeros to the profile's
``max_text_tokens``. Each step: t from the timestep sampler, noise from a generator seeded by
(seed, batch index), x_t = (1 - t) x0 + t noise, the model sees t * 1000 and is trained to
predict noise - x0 (mean squared error). Because the data order, the noise and the timesteps
are functions of the batch index, and checkpoints hold the LoRA weights, the optimizer, the
scheduler and the RNG state (dropout), a resumed run ends with the same LoRA as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

from pipeline import schemas
from pipeline.cache import CacheStore
from pipeline.fsutil import atomic_path, sha256_file, sha256_json, write_json
from pipeline.models.devices import resolve_device
from pipeline.models.transformer import load_transformer
from pipeline.profiles import Profile
from pipeline.train import checkpoint as ckpt
from pipeline.train.config import TrainConfig
from pipeline.train.data import Batch, BatchPlan, CachedBatches, check_profile, held_out_flags, sample_repeats
from pipeline.train.estimate import Estimate, ModelSize, estimate_step, video_tokens
from pipeline.train.lora import add_lora, lora_metadata, lora_state_dict, save_lora_files, trainable_parameters
from pipeline.train.manifest import build_manifest, times_seen

log = logging.getLogger("train")

STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp32": torch.float32}
SAVE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Modules kept in their compute dtype under fp8 storage (precision-critical, or the trainable LoRA).
FP8_SKIP = ("lora_", "norm", "patch_embedding", "condition_embedder", "proj_out", "scale_shift_table")


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def flow_matching_loss(model, latents: torch.Tensor, text: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                       compute_dtype: torch.dtype) -> torch.Tensor:
    """MSE between the model's velocity and noise - x0 at x_t = (1 - t) x0 + t noise."""
    tt = t.view(-1, *([1] * (latents.dim() - 1)))
    x_t = (1 - tt) * latents + tt * noise
    target = noise - latents
    autocast = compute_dtype != torch.float32
    with torch.autocast(latents.device.type, dtype=compute_dtype, enabled=autocast):
        pred = model(hidden_states=x_t.to(compute_dtype), timestep=t * 1000,
                     encoder_hidden_states=text.to(compute_dtype), return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device) -> tuple[torch.optim.Optimizer, bool]:
    """(optimizer, is 8-bit): bitsandbytes AdamW8bit when asked, or on ``auto`` with a GPU and bitsandbytes."""
    want_8bit = cfg.optimizer == "adamw8bit" or (cfg.optimizer == "auto" and device.type == "cuda")
    if want_8bit:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay), True
        except ImportError:
            if cfg.optimizer == "adamw8bit":
                raise RuntimeError("train.optimizer is adamw8bit but bitsandbytes is not installed (pip install bitsandbytes)") from None
            log.info("bitsandbytes not installed: using torch AdamW")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay), False


def resolve_storage(base_storage: str, device: torch.device) -> tuple[str, torch.dtype]:
    """(storage actually used, compute dtype): bf16 becomes fp32 on a CPU; fp8 computes in bf16 on a GPU."""
    if device.type != "cuda" and base_storage == "bf16":
        log.info("CPU run: base weights in float32 (bf16 is for GPUs)")
        base_storage = "fp32"
    compute = STORAGE_DTYPES[base_storage] if device.type == "cuda" else torch.float32
    return base_storage, compute


def setup_lora_training(model, cfg: TrainConfig, storage: str, compute: torch.dtype):
    """Add the LoRA adapter (float32 weights), fp8 layerwise casting of the base, gradient checkpointing."""
    lora_config = add_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, cfg.seed)
    if storage == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
                                       skip_modules_pattern=FP8_SKIP)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    return lora_config


def prepare_model(profile: Profile, cfg: TrainConfig, device: torch.device):
    """The profile's transformer set up for LoRA training: (model, LoRA config, storage, compute dtype)."""
    storage, compute = resolve_storage(cfg.base_storage, device)
    # fp8: load and cast on the CPU, so the bf16 weights never have to fit on the GPU
    model = load_transformer(profile, dtype=compute, device="cpu" if storage == "fp8" else device)
    lora_config = setup_lora_training(model, cfg, storage, compute)
    return model.to(device), lora_config, storage, compute


def micro_step(model, latents: torch.Tensor, text: torch.Tensor, sampler, generator: torch.Generator,
               compute: torch.dtype, grad_accum: int = 1) -> float:
    """Forward and backward of one batch (noise and timesteps from ``generator``); returns the loss."""
    t = sampler.sample(latents.shape[0], generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device)
    loss = flow_matching_loss(model, latents, text, t, noise, compute)
    (loss / grad_accum).backward()
    return loss.item()


def optimizer_step(params: list[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float) -> None:
    if max_grad_norm and max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _prefetch(batches: Iterator[Batch], loader: CachedBatches) -> Iterator[tuple[Batch, tuple[torch.Tensor, torch.Tensor]]]:
    """Load the next batch from the cache in a thread while the current one trains."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        batch = next(batches)
        future = pool.submit(loader.load, batch.rows)
        while True:
            nxt = next(batches)
            nxt_future = pool.submit(loader.load, nxt.rows)
            yield batch, future.result()
            batch, future = nxt, nxt_future


@torch.no_grad()
def evaluate(model, loader: CachedBatches, rows: list[int], sample_ids: list[str], timesteps: list[float],
             seed: int, device: torch.device, compute_dtype: torch.dtype) -> float:
    """Mean loss over ``rows`` at fixed timesteps with fixed noise per sample (comparable across steps and runs)."""
    if not rows:
        return math.nan
    was_training = model.training
    model.eval()
    total = 0.0
    for r in rows:
        latents, text = loader.load([r])
        latents, text = latents.to(device), text.to(device)
        g = torch.Generator(device).manual_seed(_seed("eval", seed, sample_ids[r]))
        noise = torch.randn(latents.shape, generator=g, device=device)
        for t in timesteps:
            tt = torch.full((1,), float(t), device=device)
            total += flow_matching_loss(model, latents, text, tt, noise, compute_dtype).item()
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


def train(cfg: TrainConfig, profile: Profile, samples: pl.DataFrame, store: CacheStore, out_dir: str | Path,
          on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train a LoRA on ``samples`` (from ``data.build_samples``); write the run folder; return the metrics.

    ``on_step(step, loss)`` is called after every optimizer step (after any checkpoint of that step).
    """
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    check_profile(samples, profile)

    loader = CachedBatches(store, samples, profile.max_text_tokens)
    missing = set(loader.missing())
    for r in sorted(missing):
        key = samples["latent_key"][r] if not store.has(samples["latent_key"][r]) else samples["text_key"][r]
        log.warning("%s: cache entry missing, sample %s skipped (re-run the encode stage)", store.path(key), samples["sample_id"][r])
    if missing:
        keep = [i for i in range(samples.height) if i not in missing]
        samples = samples[keep]
        loader = CachedBatches(store, samples, profile.max_text_tokens)
    if samples.height == 0:
        raise ValueError("no samples to train on (encoded.parquet is empty or every cache entry is missing)")

    held = held_out_flags(samples, cfg.held_out_fraction, cfg.held_out_clips, cfg.held_out_by)
    train_rows = [i for i, h in enumerate(held) if not h]
    eval_rows = [i for i, h in enumerate(held) if h][: cfg.eval_max_samples]
    train_samples = samples[train_rows]
    plan = BatchPlan(train_samples, sample_repeats(train_samples, cfg.repeats, cfg.dataset_repeats),
                     cfg.batch_size, cfg.seed, cfg.image_batch_fraction)
    sample_ids = samples["sample_id"].to_list()
    log.info("%d training samples (%s), %d held out; buckets: %s", len(train_rows),
             ", ".join(f"{k}: {plan.batches_per_epoch[k]} batches/epoch" for k in plan.kinds), len(held) - len(train_rows),
             ", ".join(f"{b[0]} {b[1]}x{b[2]}x{b[3]}" for b in sorted(set(plan.buckets))))

    model, lora_config, storage, compute = prepare_model(profile, cfg, device)
    params = trainable_parameters(model)
    optimizer, is_8bit = make_optimizer(cfg, list(params.values()), device)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.steps)

    biggest = max(train_samples["latent_shape"].to_list(), key=lambda s: video_tokens(s))
    est = estimate_step(ModelSize.of(model), video_tokens(biggest), profile.max_text_tokens, cfg.batch_size,
                        storage, cfg.gradient_checkpointing, is_8bit,
                        torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    log.info("largest bucket latents %s: %s", biggest, est.describe())

    fingerprint = sha256_json({"settings": cfg.training_settings(), "profile": profile.name, "repo": profile.repo,
                               "storage": storage, "samples": [sample_ids, samples["latent_key"].to_list(),
                                                               samples["text_key"].to_list(), held]})
    ckpt_dir = out_dir / "checkpoints"
    start, train_losses, eval_losses, resumed_from = 0, [], [], None
    found = ckpt.load_latest(ckpt_dir, fingerprint)
    if found is not None:
        state = ckpt.restore(found, params, optimizer, scheduler)
        start, resumed_from = state["step"], state["step"]
        train_losses = [tuple(x) for x in state["train_losses"]]
        eval_losses = [tuple(x) for x in state["eval_losses"]]
        log.info("resuming from %s (step %d of %d)", found["path"], start, cfg.steps)
    else:
        if n := ckpt.clear(ckpt_dir):
            log.info("%s: removed %d checkpoint(s) of another configuration", ckpt_dir, n)
        torch.manual_seed(_seed("global", cfg.seed))
        if device.type == "cuda":
            torch.cuda.manual_seed_all(_seed("global", cfg.seed))

    sampler = cfg.sampler()

    def run_eval(step: int) -> None:
        if eval_rows and not any(s == step for s, _ in eval_losses):
            value = evaluate(model, loader, eval_rows, sample_ids, cfg.eval_timesteps, cfg.eval_seed, device, compute)
            eval_losses.append((step, value))
            log.info("step %d: eval loss %.5f", step, value)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if start == 0:
        run_eval(0)
    batches = _prefetch(plan.iterate(start * cfg.grad_accum), loader)
    step_times = []
    bar = tqdm(range(start, cfg.steps), desc="train", unit="step", initial=start, total=cfg.steps, disable=not cfg.progress)
    for step in bar:
        t0 = time.perf_counter()
        micro_losses = []
        for _ in range(cfg.grad_accum):
            batch, (latents, text) = next(batches)
            latents, text = latents.to(device, non_blocking=True), text.to(device, non_blocking=True)
            g = torch.Generator(device).manual_seed(_seed("batch", cfg.seed, batch.index))
            micro_losses.append(micro_step(model, latents, text, sampler, g, compute, cfg.grad_accum))
        optimizer_step(list(params.values()), optimizer, scheduler, cfg.max_grad_norm)
        done = step + 1
        value = sum(micro_losses) / len(micro_losses)
        train_losses.append((done, value))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
        if cfg.eval_every > 0 and done % cfg.eval_every == 0:
            run_eval(done)
        if (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0) or done == cfg.steps:
            ckpt.save_checkpoint(ckpt_dir, done, params, optimizer, scheduler,
                                 {"fingerprint": fingerprint, "train_losses": train_losses, "eval_losses": eval_losses,
                                  "batches_consumed": done * cfg.grad_accum}, keep=cfg.keep_checkpoints)
            _write_csv(out_dir / "loss.csv", ("step", "train_loss"), train_losses)  # follow a long run
            _write_csv(out_dir / "eval_loss.csv", ("step", "eval_loss"), eval_losses)
        if on_step is not None:
            on_step(done, value)
    run_eval(cfg.steps)
    peak_gib, peak_kind = peak_memory(device)
    log.info("measured peak memory %.2f GiB (%s); estimate was %.2f GiB", peak_gib, peak_kind, est.peak_gib)

    # outputs: manifest first (its hash goes into the LoRA metadata)
    seen = times_seen(plan, cfg.steps * cfg.grad_accum, train_rows, samples.height)
    manifest_path = out_dir / "manifest.parquet"
    schemas.write_table(build_manifest(samples, seen, held), manifest_path, "manifest")
    meta = lora_metadata(run_name=cfg.run_name, profile=profile.name, family=profile.family,
                         base_model=profile.repo or "tiny", rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets,
                         steps=cfg.steps, manifest_sha256=sha256_file(manifest_path), expert=cfg.expert)
    save_lora_files(out_dir, lora_state_dict(model), lora_config, meta, SAVE_DTYPES[cfg.save_dtype])
    _write_csv(out_dir / "loss.csv", ("step", "train_loss"), train_losses)
    _write_csv(out_dir / "eval_loss.csv", ("step", "eval_loss"), eval_losses)
    metrics = _metrics(cfg, train_losses, eval_losses, est, peak_gib, peak_kind, step_times, device,
                       len(train_rows), len(held) - len(train_rows), sum(p.numel() for p in params.values()), resumed_from)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


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
        "estimate_peak_gib": round(est.peak_gib, 3),
        "estimate_step_s": round(est.step_s, 3),
        "peak_memory_gib": round(peak_gib, 3),
        "peak_memory_kind": peak_kind,
        "step_s_median": round(statistics.median(steady), 4) if steady else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "resumed_from_step": resumed_from,
    }
