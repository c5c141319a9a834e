"""The project's LoRA training step at real Wan 2.1 sizes: peak memory and seconds per step.

Random-initialised transformers at the real 1.3B / 14B shapes (no weights needed to measure
memory and time), set up exactly as the train stage sets them up (``pipeline.train.loop``:
peft ``add_adapter`` LoRA r32 on attention + FFN in float32, bf16 or fp8-stored base weights,
gradient checkpointing, the optimizer the stage picks) and stepped with the stage's own
``micro_step`` / ``optimizer_step`` on cached-style inputs (latents + padded prompt embeddings).
Before stepping it prints the stage's pre-run estimate, so the two can be compared.

Compare with ``../shared/bench/wan_lora_vram.py`` (naive diffusers + peft) on the same card,
same call: the baseline's figures are in ``bench/baseline-h200.jsonl`` of the shared folder.

  python bench/train_step.py                         # 1.3b, 14b, 14b_fp8 at 480x832x81 on a GPU
  python bench/train_step.py --cases 1.3b --steps 4
  python bench/train_step.py --tiny                  # CPU smoke test of the same code
  python bench/train_step.py --profile wan2.2-ti2v-5b --cases 5b   # another family's model and conditioning
  python bench/train_step.py --tiny --profile tiny-i2v
  python bench/train_step.py --cases 14b_fp8 --budget 24   # the planned run, capped at 24 GiB

With ``--budget`` the memory planner of the train stage picks block swap / activation offload /
FFN chunks for that budget, and on a GPU the process is capped there with
``torch.cuda.set_per_process_memory_fraction`` (after the model is built and its swapped
blocks are parked in host memory), so the step runs as on a card of that size. ``--plan
N,offload,chunks`` forces a plan instead. ``bench/train_memory.py`` runs the issue's set of
cases and prints them side by side.

Each case prints one JSON line and appends it to $OUT/train_step.jsonl (partial results
survive a timeout).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.profiles import get_profile
from pipeline.models.tiny.transformer import TINY_IMAGE_DIM
from pipeline.models.transformer import (
    build_on_device,
    transformer_config,
    transformer_in_channels,
)
from pipeline.train.conditioning import Conditioning, TrainInputs
from pipeline.train.config import TrainConfig
from pipeline.train.estimate import ModelSize, video_tokens
from pipeline.train.memory import apply_memory_plan
from pipeline.train.planner import Wanted, choose_plan
from pipeline.train.setup import make_optimizer, optimizer_is_8bit, resolve_storage, setup_lora_training
from pipeline.train.step import micro_step, optimizer_step

REAL_IMAGE_DIM, REAL_IMAGE_TOKENS, TINY_IMAGE_TOKENS = 1280, 257, 17  # CLIP ViT-H/14 at 224 px; the tiny CLIP


def run_case(name: str, args, device: torch.device) -> dict:
    size = "tiny" if args.tiny else name.split("_")[0]
    fp8 = name.endswith("fp8")
    prof = get_profile(args.profile)
    frames, height, width = (9, 64, 64) if args.tiny else (args.frames, args.height, args.width)
    text_dim, text_len = (32, 16) if args.tiny else (4096, 512)
    ch, s_sp = prof.latent_channels, prof.vae_scale_spatial
    latent = [ch, (frames - 1) // 4 + 1, height // s_sp, width // s_sp]
    conditioning = Conditioning.of(prof)
    image_dim = (TINY_IMAGE_DIM if args.tiny else REAL_IMAGE_DIM) if prof.image_encoder else None
    cfg = TrainConfig(rank=32, alpha=32, base_storage="fp8" if fp8 else "bf16", optimizer=args.optimizer,
                      timestep_sampling="sigmoid", progress=False)
    storage, compute = resolve_storage(cfg.base_storage, device)
    rec = {"case": name, "profile": prof.name, "frames": frames, "h": height, "w": width, "latent": [1, *latent],
           "storage": storage}

    t0 = time.time()
    config = transformer_config(size, ch, text_dim, transformer_in_channels(prof), image_dim)
    if args.tiny and args.layers:
        config["num_layers"] = args.layers
    model = build_on_device(config, compute, device)
    model.requires_grad_(False)
    setup_lora_training(model, cfg, storage, compute)
    size_info = ModelSize.of(model)
    wanted = Wanted(*args.plan) if args.plan else Wanted(0, False, 1) if args.budget is None else Wanted()
    plan, est = choose_plan(size_info, video_tokens(latent), args.budget, wanted, text_tokens=text_len, batch_size=1,
                            storage=storage, checkpointing=True, optimizer_8bit=optimizer_is_8bit(cfg, device),
                            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    print(f"# {name}: {plan.describe(size_info.num_layers)}; {est.describe()}", flush=True)
    memory = apply_memory_plan(model, plan, device, True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, is_8bit = make_optimizer(cfg, params, device)
    from diffusers.optimization import get_scheduler

    scheduler = get_scheduler("constant", optimizer)
    rec.update(params_total=size_info.base_params + size_info.lora_params, params_lora=size_info.lora_params,
               optimizer_8bit=is_8bit, build_s=round(time.time() - t0, 1), budget_gib=args.budget,
               plan=plan.describe(size_info.num_layers), blocks_to_swap=plan.blocks_to_swap,
               offload_activations=plan.offload_activations, ffn_chunks=plan.ffn_chunks,
               estimate_peak_gb=round(est.peak_gib, 6), estimate_step_s=round(est.step_s, 3))
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        if args.budget is not None:  # play a card of this size from here on
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.budget * 2**30 / total), device)
        rec["weights_resident_gb"] = round(torch.cuda.memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)

    g = torch.Generator(device).manual_seed(0)
    latents = torch.randn([1, *latent], generator=g, device=device)
    text = torch.zeros(1, text_len, text_dim, device=device)
    text[:, :100] = torch.randn(1, min(100, text_len), text_dim, generator=g, device=device)[:, :text_len]
    cond = torch.randn([1, *latent], generator=g, device=device) if conditioning.needs_cond else None
    n_img = TINY_IMAGE_TOKENS if args.tiny else REAL_IMAGE_TOKENS
    image = torch.randn(1, n_img, image_dim, generator=g, device=device) if image_dim else None
    inputs = TrainInputs(latents, text, cond, image)
    sampler = cfg.sampler()
    times, loss = [], 0.0
    for _ in range(args.steps + 1):
        sync(device)
        t1 = time.time()
        loss = micro_step(model, inputs, sampler, g, compute, conditioning=conditioning)
        optimizer_step(params, optimizer, scheduler, cfg.max_grad_norm)
        sync(device)
        times.append(time.time() - t1)
    steady = times[1:]
    rec.update(first_step_s=round(times[0], 2), step_s_median=round(statistics.median(steady), 3),
               step_s_min=round(min(steady), 3), loss=round(loss, 4))
    rec.update(memory.stats())
    if device.type == "cuda":
        rec["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        rec["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    else:
        import resource

        rec["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    del model, optimizer, params, latents, text, inputs, memory
    return rec


def _plan(text: str) -> tuple[int, bool, int]:
    n, offload, chunks = (int(x) for x in text.split(","))
    return n, bool(offload), chunks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model and shapes (CPU smoke test)")
    ap.add_argument("--cases", default="1.3b,14b,14b_fp8",
                    help="comma list of model sizes 1.3b, 5b, 14b, with _fp8 for fp8 storage (default 1.3b,14b,14b_fp8)")
    ap.add_argument("--profile", default="wan2.1-t2v-1.3b",
                    help="model family whose channels and conditioning are used: i2v adds the mask and condition "
                         "channels (and CLIP embeddings for Wan 2.1), ti2v uses 48 channels and 16x VAE "
                         "compression (default wan2.1-t2v-1.3b; the size comes from --cases)")
    ap.add_argument("--fp8", action="store_true", help="run only the fp8 variant of each case")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up step (default 5)")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit", "auto"],
                    help="adamw matches the baseline (default); auto = the stage's default")
    ap.add_argument("--budget", type=float, default=None,
                    help="GiB: plan for this budget and (on a GPU) cap the process there (default: no plan, no cap)")
    ap.add_argument("--plan", type=_plan, default=None, metavar="N,OFFLOAD,CHUNKS",
                    help="force a memory plan, e.g. 20,1,1 (blocks to swap, offload 0/1, FFN chunks)")
    ap.add_argument("--layers", type=int, default=None, help="--tiny only: blocks of the tiny model (default 2)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(os.environ.get("OUT", "/tmp")) / "train_step.jsonl"
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.fp8:
        cases = [c if c.endswith("fp8") else f"{c}_fp8" for c in cases]
        cases = list(dict.fromkeys(cases))
    if args.tiny:
        cases = ["tiny_fp8" if c.endswith("fp8") else "tiny" for c in cases]
        cases = list(dict.fromkeys(cases))
    import diffusers
    import peft

    print(json.dumps({"case": "versions", "torch": torch.__version__, "diffusers": diffusers.__version__,
                      "peft": peft.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}))
    for name in cases:
        try:
            rec = run_case(name, args, device)
        except Exception as e:  # record and go on to the next case
            rec = {"case": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        rec["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        line = json.dumps(rec)
        print(line, flush=True)
        with open(out, "a") as f:
            f.write(line + "\n")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
