"""Where a profile's weights live on disk: a local directory, or a diffusers hub repo
resolved through the Hugging Face cache (downloaded once when online; offline it must
already be there)."""

from __future__ import annotations

from pathlib import Path

from pipeline.models.profiles import Profile


def model_folder(profile: Profile, subfolder: str) -> Path:
    """The local folder of ``subfolder`` (e.g. ``vae``) of the profile's weights."""
    if profile.repo is None:
        raise ValueError(f"profile '{profile.name}' has no weights (tiny models are built from configs)")
    local = Path(profile.repo).expanduser()
    if local.is_dir():
        folder = local / subfolder
        if not folder.is_dir():
            raise FileNotFoundError(f"{local}: no '{subfolder}' subfolder (expected the diffusers layout)")
        return folder
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(profile.repo, allow_patterns=[f"{subfolder}/*"])
    except Exception as e:  # offline and not cached, no such repo, ...
        raise FileNotFoundError(
            f"{profile.repo}/{subfolder}: weights not available ({type(e).__name__}: {e}); "
            "download them once online or set model.path to a local copy"
        ) from e
    return Path(root) / subfolder
