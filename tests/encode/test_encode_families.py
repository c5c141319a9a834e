"""The encode stage for every model family's tiny profile: what each caches, which keys they share,
and the refusal of latents made with another family's VAE."""

import polars as pl
import pytest
import torch

from pipeline.cache.store import CacheStore
from pipeline.cli import main as vlp
from pipeline.core import schemas
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encode import encode_dataset
from pipeline.encode.jobs import first_frame_condition
from pipeline.encode.pixels import load_frames
from pipeline.encode.plan import plan_samples
from pipeline.models.compat import check_encoded_for_profile
from pipeline.models.profiles import get_profile
from pipeline.models.vae import (
    encode_mean,
    load_vae,
    vae_fingerprint,
)
from tests.helpers.encode_data import make_image, make_video, tables
from tests.helpers.latents import denormalize_latents, load_sample

CFG = EncodeConfig(frame_buckets=(17,), area=64 * 64, image_area=64 * 64, batch_size=2, device="cpu")
# run order: each later profile shows what it can reuse from the ones before (one shared store)
ORDER = ["tiny", "tiny-t2v-a14b", "tiny-i2v", "tiny-i2v-a14b", "tiny-ti2v"]
# profile -> (latent channels, I2V condition cached, CLIP image embedding cached)
WANTS = {
    "tiny": (16, False, False),
    "tiny-t2v-a14b": (16, False, False),
    "tiny-i2v": (16, True, True),
    "tiny-i2v-a14b": (16, True, False),
    "tiny-ti2v": (48, False, False),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    rows = [make_video(root, "clip_a", 20, w=80, h=64, seed=1)[1], make_image(root, "photo_b", w=72, h=56)[1]]
    ds, caps = tables(rows, {"clip_a": "a red bike on a road", "photo_b": "a portrait"})
    store = CacheStore(root / "cache")
    results = {name: encode_dataset(ds, caps, store, get_profile(name), CFG, root=root) for name in ORDER}
    return root, ds, caps, store, results


def rows_of(result) -> dict[str, dict]:
    return {row["kind"]: row for row in result.table.iter_rows(named=True)}


@pytest.mark.parametrize("name", ORDER)
def test_each_family_caches_what_it_needs_and_nothing_more(runs, name):
    root, ds, caps, store, results = runs
    r = results[name]
    channels, cond, image = WANTS[name]
    prof = get_profile(name)
    schemas.validate(r.table, "encoded")
    assert r.table.height == 2 and r.metrics["rejected"] == 0
    assert set(r.table["family"]) == {prof.family}
    rows = rows_of(r)
    video, photo = rows["video"], rows["image"]
    scale = prof.vae_scale_spatial
    for row, frames in ((video, 5), (photo, 1)):
        assert row["bucket_height"] % (2 * scale) == 0 and row["bucket_width"] % (2 * scale) == 0
        want = [channels, frames, row["bucket_height"] // scale, row["bucket_width"] // scale]
        assert row["latent_shape"] == want
        lat = store.get(row["latent_key"])["latents"]
        assert list(lat.shape) == want and lat.dtype == torch.bfloat16
        assert bool(row["cond_key"]) == cond and bool(row["image_key"]) == image
        if cond:
            c = store.get(row["cond_key"])["cond_latents"]
            assert c.shape == lat.shape and c.dtype == lat.dtype
            meta = store.metadata(row["cond_key"])
            assert meta["kind"] == "cond" and meta["tensor"] == "cond_latents" and meta["frame_index"] == str(row["frame_indices"][0])
        if image:
            e = store.get(row["image_key"])["image_embeds"]
            assert tuple(e.shape) == (17, 32) and e.dtype == torch.bfloat16  # (32/8)^2 patches + class token, hidden 32
            assert store.metadata(row["image_key"])["kind"] == "image"
    m = r.metrics
    assert m["conds_computed"] + m["conds_reused"] == (2 if cond else 0)
    assert m["images_computed"] + m["images_reused"] == (2 if image else 0)


def test_profiles_sharing_a_vae_share_entries_and_the_wan22_vae_does_not(runs):
    root, ds, caps, store, results = runs
    assert vae_fingerprint(get_profile("tiny")) == vae_fingerprint(get_profile("tiny-i2v-a14b"))
    assert vae_fingerprint(get_profile("tiny")) != vae_fingerprint(get_profile("tiny-ti2v"))
    keys = {n: r.table.sort("sample_id")["latent_key"].to_list() for n, r in results.items()}
    assert keys["tiny"] == keys["tiny-t2v-a14b"] == keys["tiny-i2v"] == keys["tiny-i2v-a14b"]
    assert not set(keys["tiny"]) & set(keys["tiny-ti2v"])
    m = {n: r.metrics for n, r in results.items()}
    assert (m["tiny"]["latents_computed"], m["tiny-t2v-a14b"]["latents_computed"]) == (2, 0)
    # the first I2V profile adds conditions (and CLIP embeddings) only; the second reuses the conditions
    assert (m["tiny-i2v"]["latents_computed"], m["tiny-i2v"]["conds_computed"], m["tiny-i2v"]["images_computed"]) == (0, 2, 2)
    assert (m["tiny-i2v-a14b"]["conds_computed"], m["tiny-i2v-a14b"]["conds_reused"], m["tiny-i2v-a14b"]["images_computed"]) == (0, 2, 0)
    assert results["tiny-i2v"].table["cond_key"].to_list() == results["tiny-i2v-a14b"].table["cond_key"].to_list()
    assert (m["tiny-ti2v"]["latents_computed"], m["tiny-ti2v"]["texts_computed"]) == (2, 0)  # same text encoder


def test_condition_is_first_frame_then_zeros_encoded_and_decodes_to_the_bucket(runs):
    root, ds, caps, store, results = runs
    prof = get_profile("tiny-i2v")
    vae = load_vae(prof)
    samples, _ = plan_samples(ds, caps, CFG, prof, root)
    s = next(x for x in samples if x.kind == "video")
    row = rows_of(results["tiny-i2v"])["video"]
    pix = load_sample(s.path, s.kind, s.source_indices(s.frame_indices), s.resize, s.size)
    # what WanImageToVideoPipeline.prepare_latents builds: first frame, 16 zero frames, VAE argmax, normalised
    condition = torch.cat([pix[:, :1], torch.zeros(3, 16, *pix.shape[2:])], dim=1)
    assert torch.equal(first_frame_condition(pix[:, :1], 17), condition)
    want = encode_mean(vae, condition[None])[0]
    cond = store.get(row["cond_key"])["cond_latents"]
    torch.testing.assert_close(cond, want.to(torch.bfloat16))  # bf16 at bf16 tolerance
    assert not torch.equal(cond, store.get(row["latent_key"])["latents"])
    # the causal VAE's first latent frame sees only the first frame: condition and latents agree there
    lat = store.get(row["latent_key"])["latents"]
    torch.testing.assert_close(cond[:, 0].float(), lat[:, 0].float(), atol=0.05, rtol=0.02)
    with torch.no_grad():
        video = vae.decode(denormalize_latents(cond[None], vae)).sample
    assert tuple(video.shape) == (1, 3, 17, row["bucket_height"], row["bucket_width"])
    assert tuple(video[0, :, 0].shape) == tuple(pix[:, 0].shape)  # the first frame, at the clip's bucket size
    # an image's condition is the image itself: the same tensor as its latents
    photo = rows_of(results["tiny-i2v"])["image"]
    torch.testing.assert_close(store.get(photo["cond_key"])["cond_latents"], store.get(photo["latent_key"])["latents"])


def test_image_embedding_is_the_penultimate_clip_hidden_state_of_the_first_frame(runs):
    root, ds, caps, store, results = runs
    from pipeline.models.image_encoder import load_image_encoder

    prof = get_profile("tiny-i2v")
    samples, _ = plan_samples(ds, caps, CFG, prof, root)
    s = next(x for x in samples if x.kind == "video")
    first = load_frames(s.path, s.kind, s.source_indices(s.frame_indices[:1]), s.resize, s.size)[0]
    processor, encoder = load_image_encoder(prof)
    with torch.no_grad():
        want = encoder(**processor(images=[first], return_tensors="pt"), output_hidden_states=True).hidden_states[-2][0]
    got = store.get(rows_of(results["tiny-i2v"])["video"]["image_key"])["image_embeds"]
    torch.testing.assert_close(got, want.to(torch.bfloat16))  # bf16 at bf16 tolerance


def test_wan22_latents_decode_with_the_wan22_vae(runs):
    root, ds, caps, store, results = runs
    prof = get_profile("tiny-ti2v")
    vae = load_vae(prof)
    assert (vae.config.z_dim, vae.config.patch_size, vae.config.scale_factor_spatial, vae.config.is_residual) == (48, 2, 16, True)
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == 48
    row = rows_of(results["tiny-ti2v"])["video"]
    with torch.no_grad():
        video = vae.decode(denormalize_latents(store.get(row["latent_key"])["latents"][None], vae)).sample
    assert tuple(video.shape) == (1, 3, 17, row["bucket_height"], row["bucket_width"])


def test_models_load_only_for_the_family_that_needs_them(runs, tmp_path, monkeypatch):
    root, ds, caps, _, _ = runs
    import pipeline.models.image_encoder as image_mod

    def refuse(*a, **k):
        raise AssertionError("image encoder loaded")

    monkeypatch.setattr(image_mod, "load_image_encoder", refuse)
    for name in ("tiny", "tiny-i2v-a14b", "tiny-ti2v"):
        encode_dataset(ds, caps, CacheStore(tmp_path / name), get_profile(name), CFG, root=root)
    with pytest.raises(AssertionError, match="image encoder loaded"):
        encode_dataset(ds, caps, CacheStore(tmp_path / "i2v"), get_profile("tiny-i2v"), CFG, root=root)


def test_wan22_buckets_step_32_px(runs, tmp_path):
    root, ds, caps, _, _ = runs
    with pytest.raises(ValueError, match="multiple of 32"):
        plan_samples(ds, caps, EncodeConfig(**{**CFG.__dict__, "step": 16}), get_profile("tiny-ti2v"), root)
    samples, _ = plan_samples(ds, caps, EncodeConfig(**{**CFG.__dict__, "step": 64}), get_profile("tiny-ti2v"), root)
    assert all(s.resize.width % 64 == 0 and s.resize.height % 64 == 0 for s in samples)


def test_latents_of_one_vae_are_refused_by_another_familys_model(runs):
    results = runs[-1]
    enc21, enc22 = results["tiny"].table, results["tiny-ti2v"].table
    with pytest.raises(ValueError) as e:
        check_encoded_for_profile(enc21, get_profile("tiny-ti2v"))
    msg = str(e.value)
    assert "\n" not in msg and "wan2.1 VAE" in msg and "wan2.1-t2v" in msg and "tiny-ti2v" in msg and "wan2.2 VAE" in msg
    with pytest.raises(ValueError, match=r"wan2\.2 VAE \(family wan2\.2-ti2v\).*profile tiny-i2v-a14b"):
        check_encoded_for_profile(enc22, get_profile("tiny-i2v-a14b"))
    # a family with the same VAE is fine (Wan 2.2 A14B trains on Wan 2.1 VAE latents) ...
    check_encoded_for_profile(enc21, get_profile("tiny-t2v-a14b"))
    check_encoded_for_profile(results["tiny-i2v"].table, get_profile("tiny"))  # extra entries are unused
    check_encoded_for_profile(results["tiny-i2v"].table, get_profile("tiny-i2v-a14b"))
    check_encoded_for_profile(enc22, get_profile("tiny-ti2v"))
    # ... but an I2V model needs the conditioning only an I2V encode computes
    with pytest.raises(ValueError, match="no first-frame conditioning.*tiny-i2v"):
        check_encoded_for_profile(enc21, get_profile("tiny-i2v"))
    with pytest.raises(ValueError, match="no CLIP image embeddings"):
        check_encoded_for_profile(results["tiny-i2v-a14b"].table, get_profile("tiny-i2v"))
    # and latents whose channel count does not match the profile are refused whatever the table says
    forged = enc22.with_columns(pl.lit("wan2.1-t2v").alias("family"))
    with pytest.raises(ValueError, match=r"\[48\] channel"):
        check_encoded_for_profile(forged, get_profile("tiny"))
    # a real profile's text encoder is wider than the tiny one's
    with pytest.raises(ValueError, match="prompt embeddings are \\[32\\] wide"):
        check_encoded_for_profile(enc21, get_profile("wan2.1-t2v-1.3b"))


def test_verify_and_gc_handle_condition_and_image_entries(runs, tmp_path, capsys):
    root, ds, caps, store, results = runs
    import shutil

    shutil.copytree(store.root, tmp_path / "cache")
    copy = CacheStore(tmp_path / "cache")
    assert vlp(["cache", "verify", "--store", str(copy.root)]) == 0
    out = capsys.readouterr().out
    assert "2 cond" in out and "2 image" in out and "latent" in out and "text" in out
    # an index of the I2V run keeps its latents, conditions, image embeddings and texts only
    index = tmp_path / "encoded.parquet"
    schemas.write_table(results["tiny-i2v"].table, index, "encoded")
    assert vlp(["cache", "gc", "--store", str(copy.root), "--keep", str(index), "--delete", "--grace", "0"]) == 0
    t = results["tiny-i2v"].table
    kept = set(t["latent_key"]) | set(t["text_key"]) | set(t["cond_key"]) | set(t["image_key"])
    assert set(copy.keys()) == kept and len(kept) == 8
    # a damaged condition entry is found
    p = copy.path(t["cond_key"][0])
    data = bytearray(p.read_bytes())
    data[-7] ^= 0xFF
    p.write_bytes(bytes(data))
    capsys.readouterr()
    assert vlp(["cache", "verify", "--store", str(copy.root)]) == 1
    assert f"BAD {p}" in capsys.readouterr().out


def test_rerun_of_an_i2v_profile_computes_nothing(runs, tmp_path):
    root, ds, caps, store, results = runs
    r = encode_dataset(ds, caps, store, get_profile("tiny-i2v"), CFG, root=root)
    m = r.metrics
    assert (m["latents_computed"], m["conds_computed"], m["images_computed"], m["texts_computed"]) == (0, 0, 0, 0)
    assert (m["conds_reused"], m["images_reused"]) == (2, 2)
    assert r.table.equals(results["tiny-i2v"].table)


def test_nan_condition_rejects_the_sample_and_is_never_cached(runs, tmp_path, monkeypatch):
    root, ds, caps, _, _ = runs
    import pipeline.models.vae as vae_mod

    real = vae_mod.encode_mean

    def nan_for_conditions(vae, pixels):
        z = real(vae, pixels)
        if pixels.shape[2] > 1 and not pixels[:, :, 1:].any():  # first frame then zeros: a condition
            z[:, 0, 0, 0, 0] = float("nan")
        return z

    monkeypatch.setattr(vae_mod, "encode_mean", nan_for_conditions)
    store = CacheStore(tmp_path / "cache")
    r = encode_dataset(ds, caps, store, get_profile("tiny-i2v-a14b"), CFG, root=root)
    assert r.metrics["rejections"] == [{"sample_id": "clip_a#0", "reason": "condition latent has NaN or Inf values"}]
    assert r.table["sample_id"].to_list() == ["photo_b#0"]
    assert (r.metrics["latents_computed"], r.metrics["conds_computed"]) == (2, 1)  # the sound video latent is kept
    kinds = sorted(store.metadata(k)["kind"] for k in store.keys())
    assert kinds == ["cond", "latent", "latent", "text"]


def test_real_layout_folders_load_with_from_pretrained(runs, tmp_path):
    """A local folder in the diffusers layout (what a downloaded repo is) takes the real-weights path."""
    from pipeline.models.profiles import Profile
    from pipeline.models.tiny.clip import (
        build_tiny_image_encoder,
        save_tiny_image_processor,
    )
    from pipeline.models.tiny.umt5 import build_tiny_encoder, save_tiny_tokenizer
    from pipeline.models.tiny.vae import build_tiny_vae

    root, ds, caps, store, results = runs
    tiny_i2v, tiny_ti2v = get_profile("tiny-i2v"), get_profile("tiny-ti2v")
    w = tmp_path / "weights"
    build_tiny_vae(tiny_i2v).save_pretrained(w / "vae")
    build_tiny_encoder(tiny_i2v).save_pretrained(w / "text_encoder")
    save_tiny_tokenizer(w / "tokenizer", tiny_i2v)
    build_tiny_image_encoder().save_pretrained(w / "image_encoder")
    save_tiny_image_processor(w / "image_processor")
    local = Profile(**{**tiny_i2v.__dict__, "name": "local-i2v", "repo": str(w)})
    r = encode_dataset(ds, caps, CacheStore(tmp_path / "cache"), local, CFG, root=root)
    assert r.metrics["images_computed"] == 2 and r.metrics["conds_computed"] == 2
    got = CacheStore(tmp_path / "cache").get(rows_of(r)["video"]["image_key"])["image_embeds"]
    want = store.get(rows_of(results["tiny-i2v"])["video"]["image_key"])["image_embeds"]
    torch.testing.assert_close(got, want)  # same weights, same embedding (other fingerprint: other key)
    # the Wan 2.2 VAE from a folder keeps its 48 channels and 16x compression
    build_tiny_vae(tiny_ti2v).save_pretrained(w / "vae22" / "vae")
    vae = load_vae(Profile(**{**tiny_ti2v.__dict__, "name": "local-ti2v", "repo": str(w / "vae22")}))
    assert (vae.config.z_dim, vae.config.scale_factor_spatial, vae.config.patch_size) == (48, 16, 2)
    with pytest.raises(ValueError, match="z_dim 48"):
        load_vae(Profile(**{**get_profile("tiny").__dict__, "name": "wrong", "repo": str(w / "vae22")}))
