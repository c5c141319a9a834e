"""Consent and likeness: the words every stage shares, and the summary a LoRA carries.

A source's record (``data/raw/sources.yaml`` or a ``<file>.yaml`` sidecar, read by the probe stage:
``pipeline.curate.probe.records``) says who owns it, under what licence, and whether the people in
it agreed to be trained on: ``consent`` is one of :data:`CONSENT_VALUES`; a source without a record
is ``unknown``. A withdrawn source is dropped by the split stage (its clips are not cut, their
files removed) and by the filter stage, always; ``filter.require_consent`` also drops every source
whose consent is not ``yes``, and ``filter.faces_require_consent`` every clip showing a face
(``face``, from the score stage) whose source's consent is not ``yes``.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

YES, NO, UNKNOWN, WITHDRAWN = "yes", "no", "unknown", "withdrawn"
CONSENT_VALUES = (YES, NO, UNKNOWN, WITHDRAWN)
WITHDRAWN_REASON = "consent withdrawn"  # the reason a withdrawn source's clips are rejected with
NO_LICENCE = "none recorded"  # how a source without a licence is counted in a summary

# The columns of the manifest (and of the dataset table) that carry a clip's consent and likeness.
CLIP_COLUMNS = ("licence", "consent", "face_share", "face")


def consent_reason(consent: str | None) -> str:
    """The filter's reason for a clip of a source whose consent is not ``yes``: ``consent: unknown``."""
    return WITHDRAWN_REASON if consent == WITHDRAWN else f"consent: {consent or UNKNOWN}"


def lacks_consent(consent: str | None) -> bool:
    return (consent or UNKNOWN) != YES


def summary(clips: pl.DataFrame) -> dict:
    """What a LoRA's ``vlp.consent`` metadata says about the clips it was trained on: ``clips``, ``consent``
    (clips per consent value), ``licences`` (clips per licence), ``faces`` (whether any clip shows a face),
    ``clips_with_face``, ``faces_without_consent`` (clips with a face whose source's consent is not yes) and
    ``face_not_measured`` (clips the score stage did not look at for faces).

    ``clips``: one row per sample or clip with ``clip_id`` and :data:`CLIP_COLUMNS` (a manifest; a clip's
    samples count once). Rows with ``held_out`` set are left out: they were never trained on.
    """
    if "held_out" in clips.columns:
        clips = clips.filter(~pl.col("held_out"))
    rows = clips.unique("clip_id", keep="first", maintain_order=True).select(*CLIP_COLUMNS).to_dicts()
    consent = Counter((r["consent"] or UNKNOWN) for r in rows)
    licences = Counter((r["licence"] or NO_LICENCE) for r in rows)
    with_face = [r for r in rows if r["face"]]
    return {
        "clips": len(rows),
        "consent": dict(sorted(consent.items())),
        "licences": dict(sorted(licences.items())),
        "faces": bool(with_face),
        "clips_with_face": len(with_face),
        "faces_without_consent": sum(lacks_consent(r["consent"]) for r in with_face),
        "face_not_measured": sum(r["face"] is None for r in rows),
    }


def describe(s: dict) -> str:
    """A summary (:func:`summary`) in one line: ``4 clips: yes 2, unknown 2; licences CC0 2, ...; faces in 2 (1 without consent)``."""
    consent = ", ".join(f"{k} {v}" for k, v in s.get("consent", {}).items()) or "none"
    licences = ", ".join(f"{k} {v}" for k, v in s.get("licences", {}).items()) or "none"
    if s.get("faces"):
        faces = f"faces in {s.get('clips_with_face', 0)} clip(s) ({s.get('faces_without_consent', 0)} without consent yes)"
    else:
        faces = "no face found"
    if s.get("face_not_measured"):
        faces += f", {s['face_not_measured']} not checked for faces"
    return f"{s.get('clips', 0)} clips: consent {consent}; licences {licences}; {faces}"
