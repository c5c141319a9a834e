"""The ``model`` params group, shared by encode and train: which family and weights."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import ParamsError, load_settings
from pipeline.models.profiles import PROFILES, Profile, get_profile


@dataclass(frozen=True)
class ModelConfig:
    profile: str = "tiny"  # a model profile (see pipeline/models/profiles.py)
    path: str | None = None  # a local copy of the weights (or another hub id); None: the profile's hub id

    def check(self) -> None:
        if self.profile not in PROFILES:
            raise ParamsError(f"params.yaml model.profile: {self.profile!r} is not allowed: must be one of "
                              + ", ".join(sorted(PROFILES)))

    @classmethod
    def from_params(cls, p: dict | None) -> ModelConfig:
        return load_settings(cls, p, "model")

    def resolve(self) -> Profile:
        return get_profile(self.profile, self.path)
