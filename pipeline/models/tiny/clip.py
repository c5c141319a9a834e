"""The tiny profiles' CLIP vision encoder (Wan 2.1 I2V): a 2-layer ``CLIPVisionModel`` and its processor.

Hidden size 32, 32 px images, 8 px patches: 17 tokens, seeded random weights. Its
``CLIPImageProcessor`` (CLIP's mean/std, resized and cropped to 32 px) is written to a folder
with ``save_pretrained``, so ``pipeline.models.image_encoder`` loads it back with
``from_pretrained`` (the same path as real weights).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from pipeline.core.fingerprint import folder_fingerprint, state_dict_fingerprint

TINY_SEED = 0
TINY_IMAGE_SIZE = 32


def tiny_image_encoder_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=8, projection_dim=32,
    )


def build_tiny_image_encoder() -> CLIPVisionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return CLIPVisionModel(tiny_image_encoder_config())


def save_tiny_image_processor(folder: str | Path) -> Path:
    """Write the tiny model's ``CLIPImageProcessor`` (CLIP's mean/std, resized and cropped to 32 px)."""
    CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    ).save_pretrained(str(folder))
    return Path(folder)


@contextmanager
def tiny_image_processor_folder() -> Iterator[Path]:
    """A temporary folder holding the tiny image processor (removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="vlp-tiny-image-processor-") as d:
        yield save_tiny_image_processor(d)


def tiny_image_encoder_fingerprint() -> str:
    """sha256 of the tiny processor's config files + the tiny encoder's state dict, config and seed."""
    h = hashlib.sha256()
    with tiny_image_processor_folder() as folder:
        h.update(folder_fingerprint(folder).encode())
    h.update(state_dict_fingerprint(
        build_tiny_image_encoder(), {"seed": TINY_SEED, **tiny_image_encoder_config().to_dict()}
    ).encode())
    return h.hexdigest()
