"""The encode stage with the tiny profile: keys, cache reuse, resume, rejection, images, decoding."""

import dataclasses
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import polars as pl
import pytest
import torch

from pipeline.cache.store import CacheStore
from pipeline.core import media, schemas
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encode import encode_dataset
from pipeline.encode.encoder import Encoder
from pipeline.encode.jobs import VaeJob
from pipeline.encode.pixels import load_frames
from pipeline.encode.plan import plan_samples
from pipeline.models.profiles import get_profile
from pipeline.models.text_encoder import load_text_encoder, text_fingerprint
from pipeline.models.vae import load_vae, vae_fingerprint
from tests.helpers.encode_data import LEAD, make_video, small_dataset, tables
from tests.helpers.latents import denormalize_latents, load_sample

TINY = get_profile("tiny")
CFG = EncodeConfig(frame_buckets=(17,), area=64 * 64, image_area=48 * 48, batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    ds, caps = small_dataset(root)
    store = CacheStore(root / "cache")
    first = encode_dataset(ds, caps, store, TINY, CFG, root=root)
    return root, ds, caps, first


def fresh_store(data, tmp_path) -> CacheStore:
    """A private copy of the module's filled store."""
    root = data[0]
    shutil.copytree(root / "cache", tmp_path / "cache")
    return CacheStore(tmp_path / "cache")


def test_first_run_computes_everything_and_table_matches_schema(data):
    root, ds, caps, r = data
    assert r.metrics | {"rejections": [], "skips": []} == {
        "samples": 4, "latents_computed": 4, "latents_reused": 0, "texts_computed": 4, "texts_reused": 0,
        "conds_computed": 0, "conds_reused": 0, "images_computed": 0, "images_reused": 0,  # text-to-video: none
        "rejected": 0, "skipped": 0, "rejections": [], "skips": [],
    }
    schemas.validate(r.table, "encoded")
    rows = {row["clip_id"]: row for row in r.table.iter_rows(named=True)}
    a = rows["clip_a"]
    assert a["sample_id"] == "clip_a#0" and a["kind"] == "video" and a["frame_indices"] == list(range(17))
    assert (a["bucket_frames"], a["bucket_height"], a["bucket_width"]) == (17, 64, 64)  # 80x64 clip, 4096 px area
    assert a["latent_shape"] == [16, 5, 8, 8] and a["dtype"] == "bfloat16" and a["family"] == "wan2.1-t2v"
    d = rows["photo_d"]
    assert d["kind"] == "image" and d["bucket_frames"] == 1 and d["latent_shape"][:2] == [16, 1]
    assert d["bucket_height"] * d["bucket_width"] <= 48 * 48
    # text: real tokens only (byte-level tokens + </s>), d_model of the profile
    assert a["text_shape"] == [len(b"a red bike on a road") + 1, TINY.text_dim]
    store = CacheStore(root / "cache")
    t = store.get(a["latent_key"])["latents"]
    assert t.dtype == torch.bfloat16 and list(t.shape) == a["latent_shape"]
    meta = store.metadata(a["latent_key"])
    assert meta["kind"] == "latent" and meta["clip_id"] == "clip_a" and meta["key"] == a["latent_key"]
    assert store.get(a["text_key"])["prompt_embeds"].shape == (21, 32)


def test_second_run_reuses_everything(data, tmp_path):
    root, ds, caps, first = data
    r = encode_dataset(ds, caps, fresh_store(data, tmp_path), TINY, CFG, root=root)
    assert (r.metrics["latents_computed"], r.metrics["texts_computed"]) == (0, 0)
    assert (r.metrics["latents_reused"], r.metrics["texts_reused"]) == (4, 4)
    assert r.table.equals(first.table)


def test_caption_edit_encodes_one_text_and_no_latent(data, tmp_path):
    root, ds, caps, first = data
    edited = caps.with_columns(
        pl.when(pl.col("clip_id") == "clip_b").then(pl.lit("waves at dawn")).otherwise(pl.col("caption")).alias("caption"))
    r = encode_dataset(ds, edited, fresh_store(data, tmp_path), TINY, CFG, root=root)
    m = r.metrics
    assert (m["texts_computed"], m["texts_reused"], m["latents_computed"], m["latents_reused"]) == (1, 3, 0, 4)
    changed = r.table.join(first.table, on="sample_id").filter(pl.col("text_key") != pl.col("text_key_right"))
    assert changed["sample_id"].to_list() == ["clip_b#0"]


def test_bucket_param_change_re_encodes_latents_only(data, tmp_path):
    root, ds, caps, _ = data
    cfg = EncodeConfig(**{**CFG.__dict__, "area": 32 * 32})
    r = encode_dataset(ds, caps, fresh_store(data, tmp_path), TINY, cfg, root=root)
    m = r.metrics
    # the three videos get new buckets; the image has its own area param, unchanged
    assert (m["latents_computed"], m["latents_reused"], m["texts_computed"], m["texts_reused"]) == (3, 1, 0, 4)


def test_latents_are_the_normalised_vae_mean_and_decode_to_the_bucket(data):
    root, ds, caps, r = data
    store = CacheStore(root / "cache")
    vae = load_vae(TINY)
    for kind, frames in (("video", 17), ("image", 1)):
        row = r.table.filter(pl.col("kind") == kind).row(0, named=True)
        z = store.get(row["latent_key"])["latents"]
        with torch.no_grad():
            video = vae.decode(denormalize_latents(z[None], vae)).sample
        assert tuple(video.shape) == (1, 3, frames, row["bucket_height"], row["bucket_width"])
    # the stored tensor is (mean - latents_mean) / latents_std of the posterior of the same pixels

    samples, _ = plan_samples(ds, caps, CFG, TINY, root)
    s = next(x for x in samples if x.clip_id == "clip_a")
    pix = load_sample(s.path, s.kind, s.source_indices(s.frame_indices), s.resize, s.size)
    with torch.no_grad():
        mu = vae.encode(pix[None]).latent_dist.mean[0]
    c = torch.tensor(vae.config.latents_mean).view(16, 1, 1, 1)
    sd = torch.tensor(vae.config.latents_std).view(16, 1, 1, 1)
    key = r.table.filter(pl.col("clip_id") == "clip_a")["latent_key"][0]
    # bf16 at bf16 tolerance (torch's defaults for bf16: rtol 1.6e-2, atol 1e-5): the encode stage's VAE pass and
    # this one may differ by float32 rounding, which can move an element across a bf16 rounding boundary
    torch.testing.assert_close(store.get(key)["latents"], ((mu - c) / sd).to(torch.bfloat16))


KEY_SCRIPT = """
import json
import polars as pl
from pipeline.core import schemas
from pipeline.encode.encoder import Encoder
from pipeline.encode.plan import assign_keys, plan_samples
from pipeline.encode.config import EncodeConfig
from pipeline.cache.store import CacheStore
from pipeline.models.profiles import get_profile
root = {root!r}
ds = pl.read_parquet(root + "/ds.parquet"); caps = pl.read_parquet(root + "/caps.parquet")
cfg = EncodeConfig(**json.loads({cfg!r}))
samples, _ = plan_samples(ds, caps, cfg, get_profile("tiny"), root)
enc = Encoder(CacheStore(root + "/unused"), get_profile("tiny"), cfg)
assign_keys(samples, cfg, enc.vae_fp, enc.text_fp, enc.max_len, enc.device)
print(json.dumps([[s.latent_key, s.text_key] for s in samples]))
"""


def test_keys_are_stable_across_processes(data, tmp_path):
    root, ds, caps, r = data
    ds.write_parquet(root / "ds.parquet")
    caps.write_parquet(root / "caps.parquet")
    cfg = json.dumps({**CFG.__dict__, "frame_buckets": list(CFG.frame_buckets)})
    script = KEY_SCRIPT.format(root=str(root), cfg=cfg)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[a, b] for a, b in zip(r.table["latent_key"], r.table["text_key"])]
    # and fingerprints are the same in this process, again
    assert vae_fingerprint(TINY) == vae_fingerprint(TINY) and text_fingerprint(TINY) == text_fingerprint(TINY)
    # other dtypes are other keys
    enc = Encoder(CacheStore(tmp_path / "x"), TINY, EncodeConfig(**{**CFG.__dict__, "dtype": "float16"}))
    samples, _ = plan_samples(ds, caps, CFG, TINY, root)
    from pipeline.encode.plan import assign_keys

    assign_keys(samples, enc.cfg, enc.vae_fp, enc.text_fp, enc.max_len, enc.device)
    assert not {s.latent_key for s in samples} & set(r.table["latent_key"])


def test_killed_encode_resumes_without_recomputing(data, tmp_path, monkeypatch):
    root, ds, caps, _ = data
    store = CacheStore(tmp_path / "cache")
    real_put = CacheStore.put
    calls = []

    def dying_put(self, key, tensors, metadata=None):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(key)
        return real_put(self, key, tensors, metadata)

    monkeypatch.setattr(CacheStore, "put", dying_put)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(ds, caps, store, TINY, CFG, root=root)
    monkeypatch.setattr(CacheStore, "put", real_put)
    assert sorted(store.keys()) == sorted(calls) and len(calls) == 2
    assert not store.leftovers()
    r = encode_dataset(ds, caps, store, TINY, CFG, root=root)
    m = r.metrics
    assert (m["latents_computed"], m["latents_reused"], m["texts_computed"]) == (2, 2, 4)
    assert all(problem is None for _, problem in store.verify())


def test_nan_latent_rejects_the_sample_and_is_never_cached(data, tmp_path, monkeypatch):
    root, ds, caps, _ = data
    import pipeline.models.vae as vae_mod

    real = vae_mod.encode_mean

    def nan_for_wide(vae, pixels):
        z = real(vae, pixels)
        if pixels.shape[-1] == 80:  # clip_b's bucket (96x64 clip -> 80x48)
            z[0, 3, 0, 0, 0] = float("nan")
        return z

    monkeypatch.setattr(vae_mod, "encode_mean", nan_for_wide)
    store = CacheStore(tmp_path / "cache")
    r = encode_dataset(ds, caps, store, TINY, CFG, root=root)
    assert r.metrics["rejected"] == 1
    assert r.metrics["rejections"] == [{"sample_id": "clip_b#0", "reason": "latent has NaN or Inf values"}]
    assert "clip_b" not in r.table["clip_id"].to_list() and r.table.height == 3
    assert len(list(store.keys())) == 3 + 3  # no latent and no text for clip_b


def test_clip_without_ok_caption_is_skipped_and_unreadable_clip_rejected(tmp_path):
    _, row_a = make_video(tmp_path, "ok_clip", 18)
    _, row_b = make_video(tmp_path, "no_caption", 18, seed=5)
    _, row_c = make_video(tmp_path, "broken", 18, seed=6)
    (tmp_path / row_c["path"]).write_bytes(b"not a video")
    ds, caps = tables([row_a, row_b, row_c], {"ok_clip": "x", "broken": "y"})
    caps = pl.concat([caps, tables([], {"no_caption": ""})[1]])
    r = encode_dataset(ds, caps, CacheStore(tmp_path / "cache"), TINY, CFG, root=tmp_path)
    assert r.table["sample_id"].to_list() == ["ok_clip#0"]
    assert r.metrics["skips"] == [{"clip_id": "no_caption", "reason": "no ok caption"}]
    assert [x["sample_id"] for x in r.metrics["rejections"]] == ["broken#0"]
    assert "broken.mp4" in r.metrics["rejections"][0]["reason"]


def test_sample_frames_are_read_from_the_span_of_the_source(tmp_path):
    """Window frame k of a clip is source frame start + k: the keys hold clip indices, the reader source indices."""
    src, row = make_video(tmp_path, "spanned", 18)
    ds, caps = tables([row], {"spanned": "a span"})
    (s,), _ = plan_samples(ds, caps, CFG, TINY, tmp_path)
    assert s.path == str(tmp_path / row["path"]) == str(src) and s.frame_indices == list(range(17))
    assert s.source_indices(s.frame_indices) == list(range(LEAD, LEAD + 17))
    r = s.resize
    got = load_frames(s.path, s.kind, s.source_indices(s.frame_indices[:2]), r, s.size)
    want = media.read_frames(src, [LEAD, LEAD + 1])
    assert np.array_equal(got, np.stack([f[r.crop_top : r.crop_top + r.height, r.crop_left : r.crop_left + r.width]
                                         for f in (cv2.resize(x, (r.scaled_width, r.scaled_height), interpolation=cv2.INTER_AREA)
                                                   for x in want)]))


def test_chunk_mode_makes_several_windows(tmp_path):
    _, row = make_video(tmp_path, "long", 40)
    ds, caps = tables([row], {"long": "a long clip"})
    cfg = EncodeConfig(**{**CFG.__dict__, "mode": "chunk", "windows": 0})
    r = encode_dataset(ds, caps, CacheStore(tmp_path / "cache"), TINY, cfg, root=tmp_path)
    assert r.table["sample_id"].to_list() == ["long#0", "long#1"]
    assert r.table["frame_indices"].to_list() == [list(range(17)), list(range(17, 34))]
    assert r.table["text_key"].n_unique() == 1 and r.table["latent_key"].n_unique() == 2
    assert r.metrics["texts_computed"] == 1 and r.metrics["latents_computed"] == 2


def test_text_embeddings_match_a_direct_encoder_call(data):
    root, ds, caps, r = data
    tok, enc = load_text_encoder(TINY)
    ids = tok(["a cat on a mat"], return_tensors="pt")
    with torch.no_grad():
        want = enc(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state[0]
    key = r.table.filter(pl.col("clip_id") == "clip_c")["text_key"][0]
    got = CacheStore(root / "cache").get(key)["prompt_embeds"]
    torch.testing.assert_close(got, want.to(torch.bfloat16))  # bf16 at bf16 tolerance


def test_text_key_follows_wan_prompt_cleanup(data, tmp_path):
    """Whitespace-only caption edits give the same embedding (WanPipeline cleans prompts), so the same key."""
    root, ds, caps, r = data
    spaced = caps.with_columns(
        pl.when(pl.col("clip_id") == "clip_c").then(pl.lit("  a cat   on a mat ")).otherwise(pl.col("caption")).alias("caption"))
    out = encode_dataset(ds, spaced, fresh_store(data, tmp_path), TINY, CFG, root=root)
    assert out.metrics["texts_computed"] == 0
    assert out.table["text_key"].to_list() == r.table["text_key"].to_list()


def test_large_frames_are_encoded_in_tiles_under_their_own_key(data, tmp_path):
    root, ds, caps, r = data
    cfg = EncodeConfig(**{**CFG.__dict__, "tile_size": 32, "tile_stride": 16})
    out = encode_dataset(ds, caps, fresh_store(data, tmp_path), TINY, cfg, root=root)
    # every bucket here is wider than 32 px: all latents re-encoded (tiled), same shapes, texts reused
    assert (out.metrics["latents_computed"], out.metrics["texts_computed"]) == (4, 0)
    assert out.table["latent_shape"].to_list() == r.table["latent_shape"].to_list()
    assert not set(out.table["latent_key"]) & set(r.table["latent_key"])


def test_threaded_read_ahead_yields_the_same_batches(data, tmp_path):
    """The GPU path reads the next batch in a thread; it must give what the sequential reader gives."""
    root, ds, caps, _ = data
    samples, _ = plan_samples(ds, caps, CFG, TINY, root)
    samples.append(dataclasses.replace(samples[0], sample_id="gone#0", path=str(tmp_path / "missing.mp4")))
    enc = Encoder(CacheStore(tmp_path / "c"), TINY, CFG)
    batches = enc.latent_batches([VaeJob(s, latent=True, cond=False) for s in samples])
    seq = list(enc._read_ahead(batches, threaded=False))
    thr = list(enc._read_ahead(batches, threaded=True))
    assert [[j.sample.sample_id for j in ok] for ok, _, _ in seq] == [[j.sample.sample_id for j in ok] for ok, _, _ in thr]
    assert all((a == b).all() for (_, fa, _), (_, fb, _) in zip(seq, thr) for a, b in zip(fa, fb))
    assert [bad for _, _, bad in thr if bad][0][0]["sample_id"] == "gone#0"


def test_progress_bars_show_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """As the other stages' bars do, encode's show in a log file (DVC's output), not only on a terminal."""
    ds, caps = small_dataset(tmp_path)
    encode_dataset(ds, caps, CacheStore(tmp_path / "cache"), TINY, CFG, root=tmp_path)
    err = capsys.readouterr().err
    assert "encode latents: 100%" in err and "encode captions: 100%" in err
