"""The probe (and list) stage's settings (``params.yaml`` group ``probe``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeConfig:
    raw_dir: str = "data/raw"  # folder of source videos and photos, listed recursively
    follow_symlinks_outside: bool = False  # follow symlinks out of raw_dir (else rejected rows)
