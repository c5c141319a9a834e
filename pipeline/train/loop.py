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

import gc
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch
from tqdm import tqdm

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.consent import summary as consent_summary
from pipeline.core.devices import resolve_device
from pipeline.core.fs import sha256_file, sha256_json, write_json
from pipeline.core.timings import split_timings
from pipeline.models.profiles import Profile
from pipeline.train import checkpoint as ckpt
from pipeline.train.conditioning import Conditioning
from pipeline.train.config import TrainConfig
from pipeline.train.data import (
    check_profile,
)
from pipeline.train.distributed import Ranks
from pipeline.train.estimate import (
    video_tokens,
)
from pipeline.train.experts import (
    Expert,
    expert_label,
    experts_to_train,
)
from pipeline.train.lora import (
    lora_metadata,
    lora_state_dict,
    save_lora_files,
    trainable_parameters,
)
from pipeline.train.manifest import build_manifest, times_seen
from pipeline.train.metadata import standard_metadata
from pipeline.train.outputs import (
    SNAPSHOTS,
    TIMINGS,
    Curves,
    clear_other_lora_files,
    clear_snapshots,
    memory_metrics,
    peak_memory,
    run_metrics,
)
from pipeline.train.rundata import RunData, prefetch, prepare_data
from pipeline.train.sampling import SampleMaker
from pipeline.train.setup import (
    log_plan,
    make_optimizer,
    optimizer_is_8bit,
    plan_run,
    prepare_model,
    resolve_storage,
)
from pipeline.train.signals import StopSignals
from pipeline.train.step import (
    evaluate,
    micro_step,
    optimizer_step,
    seed_of,
    skip_update,
)
from pipeline.train.tracking import Tracker

log = logging.getLogger("train")

SAVE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def train(cfg: TrainConfig, profile: Profile, samples: pl.DataFrame, store: CacheStore, out_dir: str | Path,
          on_step: Callable[[int, float], None] | None = None, prompts: pl.DataFrame | None = None,
          sample_images: pl.DataFrame | None = None) -> dict:
    """Train the LoRA(s) on ``samples`` (from ``data.build_samples``); write the run folder; return the metrics.
    ``prompts``: the encode stage's ``prompts.parquet`` (the empty prompt for caption dropout, the sample
    prompts); ``sample_images``: its ``sample_images.parquet`` (the sample images' conditioning).

    ``on_step(step, loss)`` is called after every optimizer step (after any checkpoint of that step; the
    loss is NaN for a step that made no update); with two experts trained in turn the second one's steps
    count on from ``train.steps``.
    """
    out_dir = Path(out_dir)
    ranks = Ranks.from_env()  # several processes under torchrun: data-parallel (``distributed``)
    device = ranks.setup(resolve_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    check_profile(samples, profile)
    experts = experts_to_train(profile, cfg.expert, cfg.min_t, cfg.max_t)
    ranks.share(cfg.grad_accum)  # a grad_accum the processes cannot share evenly fails before any work
    conditioning = Conditioning.of(profile, cfg.ti2v_mode)
    data = prepare_data(cfg, profile, samples, store, conditioning, prompts, sample_images)
    if ranks.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        clear_other_lora_files(out_dir, experts, cfg.run_name)
    ranks.barrier()

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
        # samples of the second expert denoise with the first one's LoRA, written just before
        partner_lora = out_dir / experts[0].files(cfg.run_name)[0] if i > 0 else None
        results[expert.name] = train_expert(cfg, profile, expert, data, conditioning, out_dir, device, save_manifest,
                                            curves, i * cfg.steps, step_cb, partner_lora, ranks)
    if len(experts) == 1 and not experts[0].name:
        metrics = {"family": profile.family, **results[""]}
    else:
        metrics = {"family": profile.family, "expert": expert_label(experts), **results}
    if ranks.main:  # seconds, memory and the device's name vary by machine: not in the run's files (core.timings)
        write_json(out_dir / "metrics.json", split_timings(metrics, TIMINGS)[0])
    return metrics


def rederive_schedule(optimizer: torch.optim.Optimizer, scheduler) -> None:
    """After resuming under another ``train.steps``: the scheduler (rebuilt for the new total) sets
    the learning rate of the step it stands at, instead of the one the checkpoint's schedule gave."""
    if not hasattr(scheduler, "lr_lambdas"):  # every diffusers.optimization schedule is a LambdaLR
        return
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def train_expert(cfg: TrainConfig, profile: Profile, expert: Expert, data: RunData, conditioning: Conditioning,
                 out_dir: Path, device: torch.device, save_manifest: Callable[[], str], curves: Curves,
                 step_offset: int = 0, on_step: Callable[[int, float], None] | None = None,
                 partner_lora: Path | None = None, ranks: Ranks = Ranks()) -> dict:
    """Train one transformer's LoRA (resuming from its checkpoints), write its LoRA files and loss curves; its metrics."""
    loader, sample_ids = data.loader, data.sample_ids
    storage, _ = resolve_storage(cfg.base_storage, device)
    biggest = max(data.train_samples["latent_shape"].to_list(), key=lambda s: video_tokens(s))
    plan, est, budget = plan_run(cfg, profile, expert, video_tokens(biggest), device, storage,
                                 optimizer_is_8bit(cfg, device))
    log_plan(plan, est, budget, biggest, device)
    model, lora_config, storage, compute, memory = prepare_model(profile, cfg, device, expert.model, plan)
    params = trainable_parameters(model)
    optimizer, is_8bit = make_optimizer(cfg, list(params.values()), device)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.steps)

    tag = (expert.name,) if expert.name else ()  # seeds of a single-expert run stay as they were
    fingerprint = sha256_json({"settings": conditioning.checkpoint_settings(cfg.training_settings()),
                               "profile": profile.name, "repo": profile.repo,
                               "storage": storage, **({"expert": expert.name} if expert.name else {}),
                               "samples": [sample_ids, data.samples["latent_key"].to_list(),
                                           data.samples["text_key"].to_list(), data.held]})
    ckpt_dir = out_dir / "checkpoints" / expert.name if expert.name else out_dir / "checkpoints"
    start, train_losses, eval_losses, resumed_from = 0, [], [], None
    skipped = {"skipped_steps": 0, "skipped_batches": 0}
    for leftover in ckpt.remove_leftovers(ckpt_dir) if ranks.main else ():
        log.info("%s: removed (left by a checkpoint save that was killed)", leftover)
    ranks.barrier()
    found = ckpt.resume(ckpt_dir, fingerprint, params, optimizer, scheduler, max_step=cfg.steps)
    ranks.barrier()  # every rank has read it before rank 0 sets the others aside
    if found is not None:
        state = found["state"]
        start, resumed_from = state["step"], state["step"]
        train_losses = [tuple(x) for x in state["train_losses"]]
        eval_losses = [tuple(x) for x in state["eval_losses"]]
        skipped = {k: int(state.get(k, 0)) for k in skipped}
        log.info("resuming from %s (step %d of %d)", found["path"], start, cfg.steps)
        saved_total = int(state.get("total_steps", cfg.steps))
        if saved_total != cfg.steps:
            rederive_schedule(optimizer, scheduler)
            log.info("train.steps %d -> %d: the %s LR schedule is re-derived for %d steps (lr now %.3g)", saved_total,
                     cfg.steps, cfg.lr_scheduler, cfg.steps, scheduler.get_last_lr()[0])
    # checkpoints not resumed (another configuration, damaged, or after the step resumed) are kept aside
    if ranks.main:
        ckpt.set_aside(ckpt_dir, after_step=start if found is not None else -1, remove=cfg.remove_stale_checkpoints)
    if found is None:
        torch.manual_seed(seed_of("global", cfg.seed, *tag))
        if device.type == "cuda":
            torch.cuda.manual_seed_all(seed_of("global", cfg.seed, *tag))

    sampler = cfg.sampler(expert.min_t, expert.max_t, expert.max_exclusive)
    eval_range = (expert.min_t, expert.max_t) if expert.name else (0.0, 1.0)

    tracker = Tracker(cfg.log_with if ranks.main else "none", out_dir, expert.name)

    def run_eval(step: int) -> None:
        if ranks.main and data.eval_rows and not any(s == step for s, _ in eval_losses):
            value = evaluate(model, loader, data.eval_rows, sample_ids, cfg.eval_timesteps, cfg.eval_seed, device, compute,
                             conditioning, eval_range)
            eval_losses.append((step, value))
            tracker.log(step_offset + step, eval_loss=value)
            log.info("step %d: eval loss %.5f", step, value)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if start == 0:
        run_eval(0)

    def save(done: int) -> Path:
        path = ckpt.save_checkpoint(ckpt_dir, done, params, optimizer, scheduler,
                                    {"fingerprint": fingerprint, "train_losses": train_losses, "eval_losses": eval_losses,
                                     "batches_consumed": done * cfg.grad_accum, "total_steps": cfg.steps, **skipped},
                                    keep=cfg.keep_checkpoints)
        curves.write(expert, step_offset, train_losses, eval_losses)  # follow a long run
        return path

    def write_lora(done: int) -> None:
        """The LoRA files: the final ones at the last step, else a snapshot (``snapshots/``). The
        manifest first: its hash goes into the metadata."""
        manifest_sha256 = save_manifest()
        meta = lora_metadata(run_name=cfg.run_name, profile=profile.name, family=profile.family,
                             base_model=profile.repo or "tiny", rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets,
                             steps=done, manifest_sha256=manifest_sha256, expert=expert.name,
                             consent=consent_summary(data.train_samples))
        meta.update(standard_metadata(cfg, profile, expert, data.train_samples,
                                      n_held_out=len(data.held) - len(data.train_rows), manifest_sha256=manifest_sha256,
                                      steps_done=done, optimizer=optimizer, started_at=started_at, finished_at=time.time()))
        final = done == cfg.steps
        folder = out_dir if final else out_dir / SNAPSHOTS
        names = expert.files(cfg.run_name) if final else expert.snapshot_files(cfg.run_name, done)
        folder.mkdir(parents=True, exist_ok=True)
        paths = save_lora_files(folder, lora_state_dict(model), lora_config, meta, SAVE_DTYPES[cfg.save_dtype], *names)
        if not final:
            log.info("step %d: snapshot %s", done, paths[0])

    clear_snapshots(out_dir / SNAPSHOTS, cfg.run_name, expert, after_step=start)
    samples = SampleMaker(cfg, profile, data.prompts, data.store, out_dir, device, compute, images=data.sample_images,
                          expert=expert, storage=storage, partner_lora=partner_lora, step_offset=step_offset)
    # this rank's share of every step's batches (all of them in a single process)
    batches = prefetch((b for b in data.plan.iterate(start * cfg.grad_accum) if ranks.mine(b.index)), loader)
    share = ranks.share(cfg.grad_accum)
    step_times, started_at = [], time.time()  # started_at: this session's training start (LoRA metadata)
    bar = tqdm(range(start, cfg.steps), desc=f"train {expert.name}".rstrip(), unit="step", initial=start, total=cfg.steps,
               disable=not cfg.progress or not ranks.main)
    with StopSignals() as stop:
        for step in bar:
            t0 = time.perf_counter()
            done = step + 1
            micro_losses, n_bad = [], 0
            for _ in range(share):
                batch, inputs, problem = next(batches)
                if problem:  # the batch index is consumed all the same: the data order stays as planned
                    log.warning("step %d: batch %d skipped (samples %s): %s", done, batch.index, loader.describe(batch.rows),
                                problem)
                    n_bad += 1
                    continue
                inputs = inputs.to(device, non_blocking=True)
                g = torch.Generator(device).manual_seed(seed_of("batch", cfg.seed, *tag, batch.index))
                micro_losses.append(micro_step(model, inputs, sampler, g, compute, cfg.grad_accum, conditioning))
            total, count, bad = ranks.sum([sum(micro_losses), len(micro_losses), n_bad], device)  # over the ranks
            skipped["skipped_batches"] += int(bad)
            value = total / count if count else math.nan
            if math.isfinite(value):
                ranks.sum_gradients(list(params.values()))
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
            lr = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", s_step=f"{step_times[-1]:.2f}", refresh=False)
            tracker.log(step_offset + done, loss=value if math.isfinite(value) else None, lr=lr, step_s=step_times[-1],
                        peak_memory_gib=peak_memory(device)[0])
            if cfg.eval_every > 0 and done % cfg.eval_every == 0:
                run_eval(done)
            saved = (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0) or done == cfg.steps
            if saved and ranks.main:
                save(done)
            if cfg.save_every > 0 and done % cfg.save_every == 0 and done < cfg.steps and ranks.main:
                write_lora(done)
            if samples.due(done) and ranks.main:
                samples.run(model, done)
            if on_step is not None and ranks.main:
                on_step(done, value)
            if ranks.any(stop.signum is not None, device):
                stop.signum = stop.signum or signal.SIGTERM  # another rank was stopped
                path = ckpt_dir / f"{ckpt.PREFIX}{done:06d}" if saved or not ranks.main else save(done)
                ranks.barrier()
                log.warning("%s after step %d: checkpoint %s written; run again to resume from it", stop.name, done, path)
                tracker.close()
                raise stop.exception()
    run_eval(cfg.steps)
    peak_gib, peak_kind = peak_memory(device)
    if device.type == "cuda":
        log.info("measured peak memory %.2f GiB allocated, %.2f GiB reserved; estimate was %.2f GiB", peak_gib,
                 torch.cuda.max_memory_reserved(device) / 2**30, est.peak_gib)
    else:
        log.info("measured peak memory %.2f GiB (%s)", peak_gib, peak_kind)

    samples.close()
    if ranks.main:
        write_lora(cfg.steps)
        curves.finish(expert, step_offset, train_losses, eval_losses)
    tracker.close()
    metrics = run_metrics(cfg, train_losses, eval_losses, est, peak_gib, peak_kind, step_times, device,
                       len(data.train_rows), len(data.held) - len(data.train_rows),
                       sum(p.numel() for p in params.values()), resumed_from)
    metrics.update(skipped)
    metrics.update(memory_metrics(memory, budget, device))
    # the next expert loads into the memory this one held (``del`` would leave run_eval / save naming unbound cells)
    model = params = optimizer = scheduler = memory = None  # type: ignore[assignment]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return metrics


