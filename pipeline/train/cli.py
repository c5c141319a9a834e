"""``vlp train`` (the train stage outside DVC) and ``vlp train-estimate`` (memory and time before a run)."""

from __future__ import annotations

import argparse

import yaml

from pipeline.params import load_params

# profile -> transformer size (WAN21_SIZES); "1.3b" / "14b" are short for the Wan 2.1 T2V profiles
SIZES = {"tiny": "tiny", "wan2.1-t2v-1.3b": "1.3b", "wan2.1-t2v-14b": "14b", "1.3b": "1.3b", "14b": "14b",
         "wan2.1-i2v-14b-480p": "14b", "wan2.1-i2v-14b-720p": "14b", "wan2.2-ti2v-5b": "5b",
         "wan2.2-t2v-a14b": "14b", "wan2.2-i2v-a14b": "14b"}
ALIASES = {"1.3b": "wan2.1-t2v-1.3b", "14b": "wan2.1-t2v-14b"}
CLIP_DIM = 1280  # Wan 2.1 I2V's CLIP ViT-H/14 width


def train_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vlp train", description="Train a Wan LoRA from encoded.parquet and the cache "
                                 "(the train stage): writes LORA_DIR/<train.run_name>/.")
    ap.add_argument("--params", default="params.yaml", help="params file with the model and train groups (default params.yaml)")
    ap.add_argument("--data", default="data", help="folder holding encoded.parquet, clips.parquet, captions.parquet (default data)")
    ap.add_argument("--lora-dir", default=None, help="output folder (default DATA/lora)")
    ap.add_argument("--cache", default=None, help="cache store (default train.cache_dir, else encode.cache_dir)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="train.KEY=VALUE",
                    help="override a param, as `dvc exp run -S` does (value parsed as YAML)")
    args = ap.parse_args(argv)
    model, train = load_params("model", args.params), load_params("train", args.params)
    for item in args.set:
        key, _, value = item.partition("=")
        group, _, name = key.partition(".")
        if group not in ("model", "train") or not name:
            ap.error(f"--set {item}: expected model.KEY=VALUE or train.KEY=VALUE")
        (model if group == "model" else train)[name] = yaml.safe_load(value)
    cache = args.cache or train.get("cache_dir") or load_params(None, args.params).get("encode", {}).get("cache_dir")
    from pipeline.train.run import run_from_params

    metrics = run_from_params(model, train, cache_dir=cache, data_dir=args.data, lora_dir=args.lora_dir)
    print(yaml.safe_dump(metrics, sort_keys=False).rstrip())
    return 0


def estimate_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="vlp train-estimate", description="Estimate peak GPU memory and time per step "
                                 "of LoRA training for a model size and clip shape (calibrated on an H200).")
    ap.add_argument("--profile", default="wan2.1-t2v-1.3b", choices=sorted(SIZES), help="model (default wan2.1-t2v-1.3b)")
    ap.add_argument("--frames", type=int, default=81, help="pixel frames, 4n+1 (default 81)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--storage", choices=["bf16", "fp8"], default="bf16", help="base weight storage (default bf16)")
    ap.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    ap.add_argument("--adamw8bit", action="store_true", help="8-bit AdamW state")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--gpu", default=None, help="GPU name to scale the time to, e.g. 'RTX 4090' (default H200)")
    args = ap.parse_args(argv)

    import torch
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    from pipeline.models.transformer import TINY_IMAGE_DIM, transformer_config, transformer_in_channels
    from pipeline.profiles import get_profile
    from pipeline.train.estimate import ModelSize, estimate_step, video_tokens
    from pipeline.train.lora import DEFAULT_TARGETS, target_regex

    size = SIZES[args.profile]
    prof = get_profile(ALIASES.get(args.profile, args.profile))
    image_dim = (TINY_IMAGE_DIM if prof.is_tiny else CLIP_DIM) if prof.image_encoder else None
    with torch.device("meta"):  # no memory, no weights
        model = WanTransformer3DModel(**transformer_config(size, prof.latent_channels, prof.text_dim,
                                                           transformer_in_channels(prof), image_dim))
    model.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=target_regex(DEFAULT_TARGETS)))
    s_sp = prof.vae_scale_spatial
    latent = [prof.latent_channels, (args.frames - 1) // 4 + 1, args.height // s_sp, args.width // s_sp]
    est = estimate_step(ModelSize.of(model), video_tokens(latent), args.text_tokens, args.batch_size, args.storage,
                        not args.no_checkpointing, args.adamw8bit, args.gpu)
    print(f"{args.profile} at {args.width}x{args.height}x{args.frames} (latents {latent}), rank {args.rank}, "
          f"{args.storage} base, checkpointing {'off' if args.no_checkpointing else 'on'}:")
    print(est.describe())
    if len(prof.experts) > 1:
        print(f"({prof.family}: per expert; the experts train one after the other, one in memory at a time)")
    return 0
