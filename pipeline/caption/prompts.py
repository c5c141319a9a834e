"""The default caption prompts (video and photo) and the hash that ties a caption to its prompt."""

from __future__ import annotations

import hashlib

VIDEO_PROMPT = (
    "Describe this video clip in two to four plain sentences: the main subject, what it does, "
    "how the camera moves (static, pan, tilt, zoom, tracking, handheld) and the setting. "
    "State only what is visible; do not guess or hedge with words like 'possibly', 'appears to' "
    "or 'seems'. Do not start with 'The video shows' or similar, and do not mention that it is a video."
)

IMAGE_PROMPT = (
    "Describe this photo in two to four plain sentences for training an image model on its subject. "
    "Describe the person or main subject and what identifies them and stays the same across photos "
    "(face, hair, build, clothing, accessories), then their pose and expression, then the setting "
    "and lighting. State only what is visible; do not guess or hedge with words like 'possibly' or "
    "'appears to'. Do not start with 'The image shows' or similar."
)


def prompt_for(kind: str, video_prompt: str, image_prompt: str) -> str:
    return image_prompt if kind == "image" else video_prompt


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()
