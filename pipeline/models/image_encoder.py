"""The CLIP vision encoder of Wan 2.1 image-to-video: loading, fingerprint, image embeddings.

Wan 2.1 I2V conditions its transformer on a CLIP vision embedding of the first frame:
``WanImageToVideoPipeline.encode_image`` runs ``image_processor`` then ``image_encoder`` with
``output_hidden_states=True`` and takes the penultimate hidden states. Real profiles load the
``image_encoder`` (``CLIPVisionModel``) and ``image_processor`` (``CLIPImageProcessor``)
subfolders of the profile's repo. Tiny profiles take theirs from ``pipeline.models.tiny.clip``
(a 2-layer ``CLIPVisionModel`` with seeded random weights, and a processor saved to a folder
and loaded back with ``from_pretrained``, the same path as real weights).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from transformers import CLIPImageProcessor, CLIPVisionModel

from pipeline.core.fingerprint import FileHashMemo, folder_fingerprint
from pipeline.models.locate import model_folder
from pipeline.models.profiles import Profile
from pipeline.models.tiny.clip import build_tiny_image_encoder, tiny_image_encoder_fingerprint, tiny_image_processor_folder

HIDDEN_STATE = -2  # which hidden state is the embedding (as WanImageToVideoPipeline.encode_image)

# Image processor settings that determine its output (what the image key records).
PROCESSOR_FIELDS = (
    "do_convert_rgb", "do_resize", "size", "resample", "do_center_crop", "crop_size",
    "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
)


def _check(profile: Profile) -> None:
    if not profile.image_encoder:
        raise ValueError(f"profile {profile.name} ({profile.family}) has no image encoder")


def load_image_processor(profile: Profile) -> CLIPImageProcessor:
    _check(profile)
    if profile.is_tiny:
        with tiny_image_processor_folder() as folder:
            return CLIPImageProcessor.from_pretrained(str(folder))
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
    if profile.is_tiny:
        return tiny_image_encoder_fingerprint()
    h = hashlib.sha256()
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
