"""The encode stage's runner: kept clips + captions into the cache store and ``encoded.parquet``;
the empty prompt and ``train.samples``' prompts into the store and ``prompts.parquet``, their images'
conditioning (image-to-video families) into the store and ``sample_images.parquet``."""

from __future__ import annotations

import logging

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.engine import stage_engine
from pipeline.core.fs import write_json
from pipeline.core.layout import Layout
from pipeline.core.sample_size import SampleSize, check_sample_image, sample_entry
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encode import encode_samples
from pipeline.encode.encoder import Encoder
from pipeline.encode.plan import plan_samples
from pipeline.encode.prompts import encode_prompts_table
from pipeline.encode.sample_images import encode_sample_images
from pipeline.models.config import ModelConfig
from pipeline.models.profiles import Profile

log = logging.getLogger("encode")


def sample_entries(train: dict | None, profile: Profile) -> list[tuple[str, str | None]]:
    """(prompt, image or None) of each ``train.samples`` entry (a prompt, or a mapping with ``prompt``
    and, for image-to-video families, ``image``): their embeddings and image conditions are cached here
    so the train stage makes sample videos without the text encoder, the VAE or CLIP."""
    out: list[tuple[str, str | None]] = []
    for i, item in enumerate((train or {}).get("samples") or []):
        prompt, image = sample_entry(item)
        if not isinstance(prompt, str) or not (image is None or isinstance(image, str)):
            raise ValueError(f"train.samples[{i}]: a prompt (text), or a mapping with 'prompt' (and 'image', a path), not {item!r}")
        check_sample_image(i, image, profile)
        out.append((prompt, image))
    return out


def run(params: dict, layout: Layout) -> dict:
    cfg = EncodeConfig.from_params(params.get("encode"))
    profile = ModelConfig.from_params(params.get("model")).resolve()
    store = CacheStore(cfg.cache_dir or layout.cache)
    store.root.mkdir(parents=True, exist_ok=True)
    entries = sample_entries(params.get("train"), profile)  # before any work: a bad train.samples fails at once
    size = SampleSize.of(params.get("train"))
    enc = Encoder(store, profile, cfg)
    samples, skipped = plan_samples(schemas.read_table(layout.dataset, "dataset"), schemas.read_table(layout.captions, "captions"),
                                    cfg, profile, ".")
    with stage_engine(params, "encode") as ray:
        if ray is not None:
            enc.use_ray(ray)
        result = encode_samples(enc, samples, skipped)
        schemas.write_table(result.table, layout.encoded, "encoded")
        prompts, computed = encode_prompts_table(enc, [p for p, _ in entries])
        schemas.write_table(prompts, layout.prompts, "prompts")
        images, images_computed = encode_sample_images(enc, [i for _, i in entries if i], ".", size.frames, size.height,
                                                       size.width)
    schemas.write_table(images, layout.sample_images, "sample_images")
    result.metrics["prompts_computed"] = computed
    result.metrics["sample_images_computed"] = images_computed
    write_json(layout.metrics("encode"), result.metrics)
    mt = result.metrics
    log.info("%s: %d samples -> %s; latents %d computed / %d reused, first-frame conditions %d / %d, "
             "image embeddings %d / %d, texts %d / %d, %d rejected, %d clips skipped, %d damaged entries recomputed",
             profile.family, mt["samples"], layout.encoded, mt["latents_computed"], mt["latents_reused"],
             mt["conds_computed"], mt["conds_reused"], mt["images_computed"], mt["images_reused"], mt["texts_computed"],
             mt["texts_reused"], mt["rejected"], mt["skipped"], mt.get("damaged_recomputed", 0))
    return mt
