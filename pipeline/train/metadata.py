"""The standard metadata of the LoRA files, beside the ``vlp.*`` keys (``lora.lora_metadata``), so that
kohya-style tools and LoRA managers (ComfyUI LoRA managers, Civitai, sd-webui's additional networks)
read the run's settings, dataset and trigger phrase:

- ``ss_*``: kohya's sd-scripts / musubi-tuner keys, every value a string (numbers as ``str``, the
  dataset and tag counts as JSON). ``ss_network_module`` is ``networks.lora_wan`` as musubi-tuner
  writes for Wan; ``ss_base_model_version`` names the model more precisely than musubi-tuner's
  ``wan`` (``wan21_t2v_14b``, ``wan22_t2v_a14b_high``, ``wan22_ti2v_5b``...).
- ``modelspec.*``: Stability's model spec (``modelspec.sai_model_spec`` 1.0.0), which ComfyUI and
  others read: the architecture as ``<model>[-high-noise|-low-noise]/lora`` (``wan2.1-t2v-14b/lora``,
  ``wan2.2-t2v-a14b-high-noise/lora``; musubi-tuner writes ``wan2.1/lora``), the Wan implementation,
  the title (run name), the date, the largest bucket's resolution, the trigger phrase (when known),
  the expert's timestep range, ``prediction_type`` ``flow``.

Tags (``ss_tag_frequency``, ``{"dataset": {tag: count}}``): the train stage does not know the caption
stage's trigger word, so, as kohya counts comma-separated tags, the first comma-separated phrase of
each trained clip's caption is counted (once per clip). A caption stage trigger word (``caption.trigger``
makes captions ``"<trigger>, caption"``) is thus the top tag, counted once for every clip; the
trigger phrase (``modelspec.trigger_phrase``) is that first phrase when every trained clip (two at
least) has the same one followed by more text, and is left out otherwise.

The per-file hashes (``sshs_model_hash``, ``modelspec.hash_sha256``) are added by ``lora.save_lora_files``.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from pipeline.models.profiles import Profile
    from pipeline.train.config import TrainConfig
    from pipeline.train.experts import Expert

NETWORK_MODULE = "networks.lora_wan"  # what musubi-tuner writes for a Wan LoRA
MODELSPEC_VERSION = "1.0.0"
PREDICTION_TYPE = "flow"
TAG_DATASET = "dataset"  # the one dataset name of ss_tag_frequency / ss_datasets
NOISE = {"high": "high-noise", "low": "low-noise"}


def model_id(profile: Profile) -> str:
    """The profile's model as ``<family>[-size]``: ``wan2.1-t2v-14b``, ``wan2.1-i2v-14b-480p``, ``wan2.2-ti2v-5b``,
    ``wan2.2-t2v-a14b``; a tiny profile (no weights) ``<family>-tiny``."""
    if profile.name.startswith(profile.family):
        return profile.name
    return f"{profile.family}-tiny" if profile.name.startswith("tiny") else f"{profile.family}-{profile.name}"


def base_model_version(profile: Profile, expert: str = "") -> str:
    """kohya's ``ss_base_model_version`` spelling: ``wan21_t2v_14b``, ``wan22_t2v_a14b_high``."""
    name = model_id(profile).replace("wan2.1", "wan21", 1).replace("wan2.2", "wan22", 1).replace("-", "_")
    return f"{name}_{expert}" if expert else name


def architecture(profile: Profile, expert: str = "") -> str:
    """``modelspec.architecture`` of the LoRA: ``wan2.1-t2v-14b/lora``, ``wan2.2-t2v-a14b-high-noise/lora``."""
    return f"{model_id(profile)}{'-' + NOISE[expert] if expert else ''}/lora"


def implementation(profile: Profile) -> str:
    return "https://github.com/Wan-Video/Wan2.2" if profile.family.startswith("wan2.2") else "https://github.com/Wan-Video/Wan2.1"


def output_name(run_name: str, expert: str = "") -> str:
    """The run name, with the expert's suffix for Wan 2.2 A14B (``run_high_noise``, as the file names)."""
    return f"{run_name}_{NOISE[expert].replace('-', '_')}" if expert else run_name


def first_phrase(caption: str) -> str:
    return caption.split(",", 1)[0].strip()


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """The first comma-separated phrase of each caption, counted (empty ones left out)."""
    return dict(Counter(p for p in map(first_phrase, captions) if p).most_common())


def trigger_phrase(captions: list[str]) -> str | None:
    """The phrase every caption (two at least) starts with, before a comma: the trigger word the caption
    stage put in front (``"<trigger>, caption"``); None when there is no such common phrase."""
    if len(captions) < 2 or any("," not in c for c in captions):
        return None
    phrases = {first_phrase(c) for c in captions}
    return phrases.pop() if len(phrases) == 1 and "" not in phrases else None


def clip_captions(samples: pl.DataFrame) -> list[str]:
    """One caption per clip (the samples of a clip, its windows, share it)."""
    return samples.unique("clip_id", keep="first", maintain_order=True)["caption"].to_list()


def dataset_info(samples: pl.DataFrame, batch_size: int, n_held_out: int, manifest_sha256: str,
                 tags: dict[str, int]) -> dict:
    """The one dataset of ``ss_datasets``: counts of the trained samples, their buckets (kohya's
    ``bucket_info``, with frames and kind), the manifest's sha256."""
    buckets = (samples.group_by("kind", "bucket_frames", "bucket_height", "bucket_width").len()
               .sort("kind", "bucket_frames", "bucket_height", "bucket_width"))
    bucket_info = {str(i): {"resolution": [r["bucket_width"], r["bucket_height"]], "frames": r["bucket_frames"],
                            "kind": r["kind"], "count": r["len"]} for i, r in enumerate(buckets.iter_rows(named=True))}
    kinds = samples["kind"].to_list()
    return {
        "name": TAG_DATASET,
        "batch_size_per_device": batch_size,
        "num_clips": samples["clip_id"].n_unique(),
        "num_samples": samples.height,
        "num_videos": kinds.count("video"),
        "num_images": kinds.count("image"),
        "num_held_out": n_held_out,
        "resolution": list(largest_bucket(samples)),
        "enable_bucket": True,
        "bucket_info": {"buckets": bucket_info},
        "tag_frequency": tags,
        "manifest_sha256": manifest_sha256,
    }


def largest_bucket(samples: pl.DataFrame) -> tuple[int, int]:
    """(width, height) of the largest trained bucket (by area)."""
    sizes = zip(samples["bucket_width"].to_list(), samples["bucket_height"].to_list())
    w, h = max(sizes, key=lambda s: (s[0] * s[1], s[0]))
    return int(w), int(h)


def optimizer_name(optimizer: object, weight_decay: float) -> str:
    """kohya's ``ss_optimizer``: the class path with its arguments, ``torch.optim.adamw.AdamW(weight_decay=0.01)``."""
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__name__}(weight_decay={weight_decay})"


def _describe(profile: Profile, expert: Expert, info: dict, steps: int, rank: int, alpha: float) -> str:
    what = f"{model_id(profile)} LoRA"
    if expert.name:
        what += (f" for the {NOISE[expert.name]} expert ({expert.model}, t in [{expert.min_t:g}, {expert.max_t:g}"
                 f"{')' if expert.max_exclusive else ']'})")
    return (f"{what}, trained by vlp on {info['num_clips']} clips ({info['num_videos']} video and {info['num_images']} "
            f"image samples), {steps} steps, rank {rank}, alpha {alpha:g}.")


def standard_metadata(cfg: TrainConfig, profile: Profile, expert: Expert, samples: pl.DataFrame, *, n_held_out: int,
                      manifest_sha256: str, steps_done: int, optimizer: object, started_at: float,
                      finished_at: float) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` keys of one expert's LoRA files. ``samples``: the trained samples
    (not the held-out ones; columns of ``encoded.parquet``); ``started_at`` / ``finished_at``: unix
    seconds (a resumed run started when it resumed, as kohya counts)."""
    captions = clip_captions(samples)
    tags = tag_frequency(captions)
    trigger = trigger_phrase(captions)
    info = dataset_info(samples, cfg.batch_size, n_held_out, manifest_sha256, tags)
    width, height = largest_bucket(samples)
    ss = {
        "ss_output_name": output_name(cfg.run_name, expert.name),
        "ss_base_model_version": base_model_version(profile, expert.name),
        "ss_sd_model_name": profile.repo or "tiny",
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": cfg.rank,
        "ss_network_alpha": cfg.alpha,
        "ss_network_dropout": cfg.dropout,
        "ss_learning_rate": cfg.lr,
        "ss_max_train_steps": cfg.steps,
        "ss_steps": steps_done,
        "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_lr_warmup_steps": cfg.warmup_steps,
        "ss_optimizer": optimizer_name(optimizer, cfg.weight_decay),
        "ss_max_grad_norm": cfg.max_grad_norm,
        "ss_seed": cfg.seed,
        "ss_gradient_accumulation_steps": cfg.grad_accum,
        "ss_batch_size_per_device": cfg.batch_size,
        "ss_timestep_sampling": cfg.timestep_sampling,
        "ss_discrete_flow_shift": cfg.shift,
        "ss_min_timestep": round(expert.min_t * 1000),
        "ss_max_timestep": round(expert.max_t * 1000),
        "ss_training_started_at": int(started_at),
        "ss_training_finished_at": int(finished_at),
        "ss_datasets": json.dumps([info]),
        "ss_tag_frequency": json.dumps({TAG_DATASET: tags}),
    }
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": architecture(profile, expert.name),
        "modelspec.implementation": implementation(profile),
        "modelspec.title": cfg.run_name,
        "modelspec.description": _describe(profile, expert, info, steps_done, cfg.rank, cfg.alpha),
        "modelspec.date": datetime.fromtimestamp(int(finished_at), UTC).isoformat(),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": PREDICTION_TYPE,
        "modelspec.timestep_range": f"{ss['ss_min_timestep']},{ss['ss_max_timestep']}",
        **({"modelspec.trigger_phrase": trigger} if trigger else {}),
    }
    return {k: str(v) for k, v in {**ss, **spec}.items()}
