"""The CLIP vision encoder of Wan 2.1 image-to-video: loading, fingerprint, image embeddings.

Wan 2.1 I2V conditions its transformer on a CLIP vision embedding of the first frame:
``WanImageToVideoPipeline.encode_image`` runs ``image_processor`` then ``image_encoder`` with
``output_hidden_states=True`` and takes the penultimate hidden states. Real profiles load the
``image_encoder`` (``CLIPVisionModel``) and ``image_processor`` (``CLIPImageProcessor``)
subfolders of the profile's repo. Tiny profiles build a 2-layer ``CLIPVisionModel`` (hidden
size 32, 32 px images, 8 px patches: 17 tokens) with seeded random weights, and a
``CLIPImageProcessor`` for its size that is saved to a folder and loaded back with
``from_pretrained`` (the same path as real weights).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from pipeline.fingerprint import FileHashMemo, folder_fingerprint, state_dict_fingerprint
from pipeline.models.locate import model_folder
from pipeline.profiles import Profile

TINY_SEED = 0
TINY_IMAGE_SIZE = 32
HIDDEN_STATE = -2  # which hidden state is the embedding (as WanImageToVideoPipeline.encode_image)

# Image processor settings that determine its output (what the image key records).
PROCESSOR_FIELDS = (
    "do_convert_rgb", "do_resize", "size", "resample", "do_center_crop", "crop_size",
    "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
)


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


def _check(profile: Profile) -> None:
    if not profile.image_encoder:
        raise ValueError(f"profile {profile.name} ({profile.family}) has no image encoder")


def load_image_processor(profile: Profile) -> CLIPImageProcessor:
    _check(profile)
    if profile.is_tiny:
        with tempfile.TemporaryDirectory(prefix="vlp-tiny-image-processor-") as d:
            return CLIPImageProcessor.from_pretrained(str(save_tiny_image_processor(d)))
    return CLIPImageProcessor.from_pretrained(str(model_folder(profile, "image_processor")))


def load_image_encoder(
    profile: Profile, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[CLIPImageProcessor, CLIPVisionModel]:
    """(processor, encoder) for the profile; the encoder frozen, in eval mode, on ``device`` in ``dtype``."""
    processor = load_image_processor(profile)
    if profile.is_tiny:
        encoder = build_tiny_image_encoder()
    else:
        encoder = CLIPVisionModel.from_pretrained(str(model_folder(profile, "image_encoder")), dtype=dtype)
    encoder.requires_grad_(False)
    return processor, encoder.to(device=device, dtype=dtype).eval()


def processor_config(processor: CLIPImageProcessor) -> dict:
    """The processor settings that change its output, JSON-ready (for the image key)."""
    d = processor.to_dict()
    return {k: (int(d[k]) if k == "resample" and d.get(k) is not None else d.get(k)) for k in PROCESSOR_FIELDS}


def image_encoder_fingerprint(profile: Profile, memo: FileHashMemo | None = None) -> str:
    """sha256 of the image processor's config files + the vision encoder's weights."""
    _check(profile)
    h = hashlib.sha256()
    if profile.is_tiny:
        with tempfile.TemporaryDirectory(prefix="vlp-tiny-image-processor-") as d:
            h.update(folder_fingerprint(save_tiny_image_processor(d)).encode())
        h.update(state_dict_fingerprint(
            build_tiny_image_encoder(), {"seed": TINY_SEED, **tiny_image_encoder_config().to_dict()}
        ).encode())
    else:
        h.update(folder_fingerprint(model_folder(profile, "image_processor"), memo).encode())
        h.update(folder_fingerprint(model_folder(profile, "image_encoder"), memo).encode())
    return h.hexdigest()


def image_encoder_id(profile: Profile, fingerprint: str) -> str:
    return f"{profile.repo or 'tiny'}/image_encoder@{fingerprint[:16]}"


@torch.no_grad()
def encode_images(processor: CLIPImageProcessor, encoder: CLIPVisionModel, images: list[np.ndarray]) -> torch.Tensor:
    """CLIP embeddings of RGB uint8 images [H, W, 3] -> [B, N, D] float32 (N tokens incl. the class
    token, D the encoder's hidden size): ``hidden_states[-2]``, as ``WanImageToVideoPipeline`` computes."""
    inputs = processor(images=images, return_tensors="pt")
    pixels = inputs["pixel_values"].to(device=encoder.device, dtype=encoder.dtype)
    out = encoder(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[HIDDEN_STATE].float()
