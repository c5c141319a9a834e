"""``vlp train`` (the train stage outside DVC) and ``vlp train-estimate`` (memory and time before a run)."""

from __future__ import annotations

import argparse

from pipeline.core.cli import CommandError, add_stage_options, layout, stage_params
from pipeline.models.profiles import get_profile

# profile -> transformer size (WAN21_SIZES); "1.3b" / "14b" are short for the Wan 2.1 T2V profiles
SIZES = {"tiny": "tiny", "wan2.1-t2v-1.3b": "1.3b", "wan2.1-t2v-14b": "14b", "1.3b": "1.3b", "14b": "14b",
         "wan2.1-i2v-14b-480p": "14b", "wan2.1-i2v-14b-720p": "14b", "wan2.2-ti2v-5b": "5b",
         "wan2.2-t2v-a14b": "14b", "wan2.2-i2v-a14b": "14b"}
ALIASES = {"1.3b": "wan2.1-t2v-1.3b", "14b": "wan2.1-t2v-14b"}
CLIP_DIM = 1280  # Wan 2.1 I2V's CLIP ViT-H/14 width


def train(args) -> int:
    from pipeline.train.stage import run, summary_table

    metrics = run(stage_params(args), layout(args))
    print(summary_table(metrics))
    return 0


def add_estimate_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--profile", default="wan2.1-t2v-1.3b", choices=sorted(SIZES), help="model (default wan2.1-t2v-1.3b)")
    ap.add_argument("--frames", type=int, default=81, help="pixel frames, 4n+1 (default 81)")
    ap.add_argument("--height", type=int, default=480, help="pixel height (default 480)")
    ap.add_argument("--width", type=int, default=832, help="pixel width (default 832)")
    ap.add_argument("--batch-size", type=int, default=1, help="samples a step (default 1)")
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank (default 32)")
    ap.add_argument("--storage", choices=["bf16", "fp8"], default="bf16", help="base weight storage (default bf16)")
    ap.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    ap.add_argument("--adamw8bit", action="store_true", help="8-bit AdamW state")
    ap.add_argument("--text-tokens", type=int, default=512, help="prompt tokens a sample (default 512, as Wan pads to)")
    ap.add_argument("--gpu", default=None, help="GPU name to scale the time to, e.g. 'RTX 4090' (default H200)")
    ap.add_argument("--budget", action="append", default=[], metavar="GIB|CARD",
                    help="a memory budget in GiB (e.g. 24) or a card name (e.g. 'RTX 4090': its memory less "
                         f"{CARD_RESERVED_GIB} GiB, its speed and host link); repeat for several (default 32, 24, 16, 12)")


def estimate(args) -> int:

    from pipeline.train.estimate import ModelSize, estimate_step, video_tokens

    prof = get_profile(ALIASES.get(args.profile, args.profile))
    size = ModelSize.of(_meta_model(args.profile, prof, args.rank))
    s_sp = prof.vae_scale_spatial
    latent = [prof.latent_channels, (args.frames - 1) // 4 + 1, args.height // s_sp, args.width // s_sp]
    tokens = video_tokens(latent)
    common = dict(text_tokens=args.text_tokens, batch_size=args.batch_size, storage=args.storage,
                  checkpointing=not args.no_checkpointing, optimizer_8bit=args.adamw8bit)
    est = estimate_step(size, tokens, gpu=args.gpu, **common)
    print(f"{args.profile} at {args.width}x{args.height}x{args.frames} (latents {latent}), rank {args.rank}, "
          f"{args.storage} base, checkpointing {'off' if args.no_checkpointing else 'on'}:")
    print(f"everything resident: {est.describe()}")
    if len(prof.experts) > 1:
        print(f"({prof.family}: per expert; the experts train one after the other, one in memory at a time)")
    print()
    print("\n".join(budget_table(size, tokens, args.budget or ["32", "24", "16", "12"], args.gpu, common)))
    return 0


CARD_RESERVED_GIB = 0.5  # of a card's memory, taken by the CUDA context and the driver before training starts


def budget_table(size, tokens: int, budgets: list[str], gpu: str | None, common: dict) -> list[str]:
    """One row per budget (GiB or a card name): fits or not, the plan, its estimate."""
    from pipeline.train.estimate import gpu_spec
    from pipeline.train.planner import PlanError, plan_memory

    rows = [("budget", "fits", "plan", "peak GiB", "s/step", "host GiB")]
    for item in budgets:
        try:
            budget, card = float(item), gpu
            label = f"{budget:g} GiB"
        except ValueError:
            spec = gpu_spec(item)
            if spec.memory_gib is None:
                raise CommandError(f"--budget {item!r}: not a number of GiB nor a known card") from None
            budget, card = spec.memory_gib - CARD_RESERVED_GIB, item
            label = f"{item} ({budget:g} GiB)"
        try:
            plan, est = plan_memory(size, tokens, budget, gpu=card, **common)
            rows.append((label, "yes", plan.describe(size.num_layers), f"{est.peak_gib:.1f}", f"{est.step_s:.2f}",
                         f"{est.host_gib:.1f}"))
        except PlanError as e:
            need = str(e).split("needs a budget of ")[1].split(";")[0]
            rows.append((label, "no", f"needs a budget of {need}", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def _meta_model(name: str, prof, rank: int):
    """The profile's transformer at its real size on the meta device (no memory, no weights), with the LoRA."""
    import torch
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    from pipeline.models.tiny.transformer import TINY_IMAGE_DIM
    from pipeline.models.transformer import transformer_config, transformer_in_channels
    from pipeline.train.lora import DEFAULT_TARGETS, target_regex

    image_dim = (TINY_IMAGE_DIM if prof.is_tiny else CLIP_DIM) if prof.image_encoder else None
    with torch.device("meta"):
        model = WanTransformer3DModel(**transformer_config(SIZES[name], prof.latent_channels, prof.text_dim,
                                                           transformer_in_channels(prof), image_dim))
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=target_regex(DEFAULT_TARGETS)))
    return model


def register(sub) -> None:
    p = sub.add_parser("train", help="train a Wan LoRA from the cache alone: DIR/lora/<run>/ (the train stage)",
                       description="Train a Wan LoRA from DIR/encoded.parquet and the cache alone (the train stage): "
                                   "writes DIR/lora/<train.run_name>/; e.g. vlp train -S train.rank=16 -S train.steps=400.")
    add_stage_options(p, "folder holding encoded.parquet, clips.parquet, captions.parquet (default data)")
    p.set_defaults(run=train)
    p = sub.add_parser("train-estimate", help="peak GPU memory, s/step and the memory plan for a model and clip shape",
                       description="Estimate peak GPU memory and time per step of LoRA training for a model and clip "
                                   "shape (calibrated on an H200), and the memory plan (block swap, activation offload, "
                                   "FFN chunks) the train stage picks for each budget or card.")
    add_estimate_arguments(p)
    p.set_defaults(run=estimate)
