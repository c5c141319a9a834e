"""Caption clean-up: strip boilerplate openings, collapse whitespace, fix capitals, cap length,
put the trigger word in front. Pure string functions, applied to every VLM answer."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Openings VLMs put before the actual description. Matched case-insensitively at the start,
# longest first; whatever follows ("a man rides...") becomes the caption.
_MEDIUM = r"(?:video|clip|video clip|footage|scene|image|photo|photograph|picture|frame|frames|shot|sequence)"
_VERB = (
    r"(?:shows|show|showcases|depicts|depict|features|captures|presents|displays|portrays|"
    r"illustrates|highlights|is showing|is of|contains|begins with|opens with|focuses on)"
)
BOILERPLATE = [
    rf"(?:in|within|throughout) (?:this|the) {_MEDIUM}\s*,?\s*(?:we (?:can )?see\s*)?",
    rf"(?:this|the|a|an) (?:short |brief |given |provided )?{_MEDIUM} {_VERB}\s*(?:that\s*)?:?\s*",
    rf"(?:here|in this {_MEDIUM}),? (?:we (?:can )?see|there is|there are)\s*",
    r"we (?:can )?see\s*",
    r"(?:sure|certainly|of course)[,!.]\s*(?:here is|here's) (?:a |the )?(?:description|caption)[^:]*:\s*",
    r"(?:here is|here's) (?:a |the )?(?:description|caption)[^:]*:\s*",
    r"(?:description|caption)\s*:\s*",
]
_BOILER_RE = re.compile(r"^\s*(?:" + "|".join(BOILERPLATE) + r")", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@dataclass(frozen=True)
class CleanupConfig:
    max_words: int = 120  # 0 = no word cap; the cut falls on a sentence boundary when possible
    max_chars: int = 0  # 0 = no character cap
    trigger: str = ""  # put in front: "<trigger>, caption"


def strip_boilerplate(text: str) -> str:
    """Remove boilerplate openings, repeatedly ("Sure, here is a description: The video shows ...")."""
    for _ in range(4):
        new = _BOILER_RE.sub("", text, count=1)
        if new == text:
            break
        text = new
    return text


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def cap_length(text: str, max_words: int = 0, max_chars: int = 0) -> str:
    """Keep whole sentences while within the caps; a first sentence that alone is too long is cut
    at a word boundary and ends with a full stop."""
    def fits(s: str) -> bool:
        return (not max_words or len(s.split()) <= max_words) and (not max_chars or len(s) <= max_chars)

    if fits(text):
        return text
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    kept = ""
    for s in sentences:
        candidate = f"{kept} {s}".strip()
        if not fits(candidate):
            break
        kept = candidate
    if kept:
        return kept
    words = text.split()
    if max_words:
        words = words[:max_words]
    out = " ".join(words)
    while max_chars and len(out) + 1 > max_chars and " " in out:
        out = out.rsplit(" ", 1)[0]
    out = out[: max_chars - 1] if max_chars and len(out) + 1 > max_chars else out
    return out.rstrip(" ,;:-") + "."


def starts_with_trigger(text: str, trigger: str) -> bool:
    trigger = trigger.strip()
    return bool(trigger) and re.match(rf"{re.escape(trigger)}(?!\w)", text, re.IGNORECASE) is not None


def apply_trigger(text: str, trigger: str) -> str:
    """``"<trigger>, text"``; a caption that already starts with the trigger word gets it spelled
    as given (the model or an editor may have capitalised it) and nothing added."""
    trigger = trigger.strip()
    if not trigger or not text:
        return text
    if starts_with_trigger(text, trigger):
        return trigger + text[len(trigger):]
    return f"{trigger}, {text}"


def clean_caption(text: str, cfg: CleanupConfig = CleanupConfig()) -> str:
    """The caption to train on, or "" when nothing usable is left."""
    text = "".join(ch if ch.isprintable() and ch != "\ufffd" else " " for ch in (text or ""))
    text = re.sub(r"\s+", " ", text).strip().strip('"').strip()
    text = strip_boilerplate(text).strip(" ,:;-")
    text = _capitalise(text)
    text = cap_length(text, cfg.max_words, cfg.max_chars)
    if not re.search(r"\w", text):
        return ""
    return apply_trigger(text, cfg.trigger)
