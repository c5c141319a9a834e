"""Whether an ``encoded`` table can train a profile's model: the refusal rule between families.

Latents are only meaningful to a transformer trained on the same VAE's latent space. Each
``encoded`` row names the family that encoded it (``family``); the family says which VAE made
the latents (``profiles.family_vae``: ``wan2.1`` or ``wan2.2``). A profile may train on rows
whose VAE is its own (Wan 2.1 T2V latents serve the Wan 2.2 A14B models, whose VAE is the
Wan 2.1 one) and is refused everything else, with one line that names both sides. The latent
channels and the text embedding width are checked too, and an I2V profile needs the
first-frame conditioning entries (and Wan 2.1 I2V the CLIP image embeddings) that only an
encode with an I2V profile computes.
"""

from __future__ import annotations

import polars as pl

from pipeline.models.profiles import Profile, family_vae


def _fix(profile: Profile) -> str:
    return f"re-run the encode stage with model.profile={profile.name}"


def check_encoded_for_profile(encoded: pl.DataFrame, profile: Profile) -> None:
    """Raise ValueError (one line) when ``encoded`` rows cannot train ``profile``'s model."""
    if encoded.height == 0:
        return
    for family in sorted(set(encoded["family"].to_list())):
        try:
            vae = family_vae(family)
        except ValueError:
            raise ValueError(
                f"encoded samples name an unknown model family '{family}'; profile {profile.name} "
                f"({profile.family}) cannot use them; {_fix(profile)}"
            ) from None
        if vae != profile.vae:
            raise ValueError(
                f"encoded latents were made with the {vae} VAE (family {family}); profile {profile.name} "
                f"({profile.family}) needs latents of the {profile.vae} VAE; {_fix(profile)}"
            )
    channels = sorted({int(s[0]) for s in encoded["latent_shape"].to_list() if s is not None and len(s)})
    if channels and channels != [profile.latent_channels]:
        raise ValueError(
            f"encoded latents have {channels} channel(s); profile {profile.name} ({profile.family}, {profile.vae} VAE) "
            f"needs {profile.latent_channels}; {_fix(profile)}"
        )
    widths = sorted({int(s[-1]) for s in encoded["text_shape"].to_list() if s is not None and len(s)})
    if widths and widths != [profile.text_dim]:
        raise ValueError(
            f"encoded prompt embeddings are {widths} wide; profile {profile.name} ({profile.family}) "
            f"needs {profile.text_dim}; {_fix(profile)}"
        )
    if profile.task == "i2v" and (encoded["cond_key"] == "").any():
        families = sorted(set(encoded.filter(pl.col("cond_key") == "")["family"].to_list()))
        raise ValueError(
            f"encoded samples of family {', '.join(families)} have no first-frame conditioning latents; "
            f"profile {profile.name} ({profile.family}) is image-to-video; {_fix(profile)}"
        )
    if profile.image_encoder and (encoded["image_key"] == "").any():
        families = sorted(set(encoded.filter(pl.col("image_key") == "")["family"].to_list()))
        raise ValueError(
            f"encoded samples of family {', '.join(families)} have no CLIP image embeddings; "
            f"profile {profile.name} ({profile.family}) needs them; {_fix(profile)}"
        )
