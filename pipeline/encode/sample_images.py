"""The images of ``train.samples`` (``{prompt: ..., image: data/raw/x.png}``): what the diffusers
image-to-video pipeline's frozen encoders make of them, cached like every other entry so the train
stage samples without the VAE or CLIP.

The image is resized to cover ``train.sample_width`` x ``train.sample_height`` (aspect kept) and
center-cropped, as training frames are (a user hands ``WanImageToVideoPipeline`` an image of the
video's size). Then, as ``WanImageToVideoPipeline.prepare_latents`` and ``encode_image`` do:

- ``i2v`` families (Wan 2.1 I2V, Wan 2.2 I2V-A14B): the image followed by ``sample_frames - 1``
  zero frames, VAE-encoded (posterior mode = mean) and normalised: a ``cond`` entry, the same
  kind and key function as a training clip's first-frame condition;
- Wan 2.1 I2V also: the CLIP vision embedding of the image (an ``image`` entry);
- Wan 2.2 TI2V-5B (``expand_timesteps``): the image alone, VAE-encoded and normalised: a
  ``latent`` entry, as a photo's.

One row per distinct image in ``sample_images.parquet``, with the keys the train stage reads.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.core import schemas
from pipeline.core.fs import sha256_file
from pipeline.core.media import read_image
from pipeline.encode.buckets import cover_resize
from pipeline.encode.encoder import Encoder
from pipeline.encode.jobs import VaeJob
from pipeline.encode.keys import COND_I2V
from pipeline.encode.plan import Sample
from pipeline.models.profiles import Profile

COND_TI2V = "ti2v-first-latent"


def conditions_images(profile: Profile) -> bool:
    """Whether the family's samples take an image (I2V: always; TI2V-5B: when one is given)."""
    return profile.task in ("i2v", "ti2v")


def image_samples(images: list[str], root: str | Path, profile: Profile, frames: int, height: int,
                  width: int) -> list[Sample]:
    """One encode ``Sample`` per distinct image: kind ``image``, bucket (``frames``, ``height``,
    ``width``) for an I2V condition, (1, height, width) for TI2V's latent. A missing or unreadable
    image is a one-line error naming it (a params problem: the stage stops before any work)."""
    out: list[Sample] = []
    for image in dict.fromkeys(images):
        path = Path(root) / image
        try:
            h, w = read_image(path).shape[:2]
            sha = sha256_file(path)
        except Exception as e:  # noqa: BLE001 - any reason the image cannot be read is the same params error
            raise ValueError(f"{path}: train.samples image cannot be read: {e}") from None
        n = frames if profile.task == "i2v" else 1
        out.append(Sample(sample_id=f"sample image {image}", clip_id=f"sample image {image}", kind="image", window=0,
                          path=str(path), clip_sha256=sha, size=(w, h), frame_indices=[0] * n,
                          resize=cover_resize(w, h, width, height), caption=""))
    return out


def encode_sample_images(enc: Encoder, images: list[str], root: str | Path, frames: int, height: int,
                         width: int) -> tuple[pl.DataFrame, int]:
    """Cache what is missing of the images' conditioning; the ``sample_images`` table and how many
    entries were computed. An image whose entries cannot be made is an error naming it."""
    profile = enc.profile
    if not images:
        return schemas.empty("sample_images"), 0
    if not conditions_images(profile):
        raise ValueError(f"train.samples: images condition image-to-video families only; {profile.name} is text-to-video")
    samples = image_samples(images, root, profile, frames, height, width)
    enc.assign_keys(samples)
    ti2v = profile.task == "ti2v"
    key_of = (lambda s: s.latent_key) if ti2v else (lambda s: s.cond_key)
    jobs = [VaeJob(s, latent=ti2v, cond=not ti2v) for s in samples if not enc._reusable(key_of(s))]
    computed = 0
    rejected: list[dict] = []
    if jobs:
        n_lat, n_cond, rejected = enc.encode_vae(jobs)
        computed += n_lat + n_cond
    missing = [s for s in samples if enc.needs_image and not enc._reusable(s.image_key)]
    if missing and not rejected:
        n, rejected = enc.encode_images(missing)
        computed += n
    if rejected:
        path = {s.sample_id: s.path for s in samples}[rejected[0]["sample_id"]]
        raise ValueError(f"{path}: train.samples image: {rejected[0]['reason']}")
    rows = [{"image": image, "sha256": s.clip_sha256, "width": s.size[0], "height": s.size[1], "bucket": list(s.bucket),
             "condition": COND_TI2V if ti2v else COND_I2V, "cond_key": key_of(s),
             "image_key": s.image_key if enc.needs_image else "", "vae": enc.vae_id}
            for image, s in zip(dict.fromkeys(images), samples)]
    return schemas.frame("sample_images", rows), computed
