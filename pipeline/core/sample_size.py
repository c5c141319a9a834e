"""``train.samples`` as both the encode stage (which caches the prompts' embeddings and the images'
conditioning) and the train stage (which samples from them) read it: an entry's prompt and image,
the family's rule for the image, and the size of the sample videos (``train.sample_frames`` /
``sample_height`` / ``sample_width``). Here so that neither stage imports the other's code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FRAMES, HEIGHT, WIDTH = 33, 480, 832  # the defaults (33 frames of 832x480, Wan's 480p landscape)


@dataclass(frozen=True)
class SampleSize:
    frames: int = FRAMES
    height: int = HEIGHT
    width: int = WIDTH

    @classmethod
    def of(cls, train: dict | None) -> SampleSize:
        """From the ``train`` params group (defaults for what it leaves out)."""
        t = train or {}
        return cls(int(t.get("sample_frames", FRAMES)), int(t.get("sample_height", HEIGHT)),
                   int(t.get("sample_width", WIDTH)))


def sample_entry(item: Any) -> tuple[Any, Any]:
    """(prompt, image or None) of a ``train.samples`` entry: a prompt, or a mapping with ``prompt`` (and
    ``image``). Unchecked: the callers say what a bad entry is in their own terms."""
    return (item.get("prompt"), item.get("image")) if isinstance(item, dict) else (item, None)


def check_sample_image(index: int, image: str | None, profile: Any) -> None:
    """The family's rule for entry ``index``'s image (``profile``: a ``models.profiles.Profile``): an
    image-to-video family needs one, a text-to-video family takes none (TI2V-5B either)."""
    if image is None and profile.task == "i2v":
        raise ValueError(f"train.samples[{index}]: {profile.name} makes videos from an image: give "
                         "{prompt: ..., image: data/raw/<file>}")
    if image is not None and profile.task == "t2v":
        raise ValueError(f"train.samples[{index}]: {profile.name} is text-to-video; leave out 'image'")
