"""What every caption backend takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pipeline.caption.media import Media


@dataclass
class CaptionItem:
    """One clip to caption: its sampled media and the prompt for its kind."""

    clip_id: str
    media: Media
    prompt: str


@dataclass
class CaptionOutput:
    text: str = ""  # raw answer, before clean-up
    new_tokens: int = 0  # tokens generated for it
    error: str = ""  # one line when the backend failed on this item


@dataclass
class GenerationParams:
    """Decoding settings, recorded on every caption row (``sampling``)."""

    max_new_tokens: int = 160
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def as_key(self) -> dict:
        key: dict[str, float] = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            key.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return key


class CaptionBackend(Protocol):
    """A captioner: :class:`~pipeline.caption.backends.hf.TransformersCaptioner` (a VLM in this
    process) or :class:`~pipeline.caption.backends.openai.OpenAICaptioner` (an OpenAI-compatible
    server). ``label`` is the ``model`` column of its rows (``name@fingerprint``)."""

    label: str
    generation: GenerationParams

    def generate(self, items: list[CaptionItem]) -> list[CaptionOutput]:
        """One output per item, in order; a failed item gets ``error`` set, never an exception."""
        ...
