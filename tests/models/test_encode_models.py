"""Model loading from a local diffusers-layout folder (the real-weights path) and weight fingerprints."""

import pytest
import torch

import pipeline.core.fingerprint as fp_mod
from pipeline.cache.store import CacheStore
from pipeline.core.fingerprint import FileHashMemo, folder_fingerprint
from pipeline.encode.config import EncodeConfig
from pipeline.encode.encode import encode_dataset
from pipeline.models.profiles import PROFILES, Profile, get_profile
from pipeline.models.text_encoder import encode_prompts, load_text_encoder
from pipeline.models.tiny.umt5 import build_tiny_encoder, save_tiny_tokenizer
from pipeline.models.tiny.vae import build_tiny_vae
from pipeline.models.vae import load_vae, vae_fingerprint
from tests.helpers.encode_data import small_dataset

TINY = get_profile("tiny")


def local_weights(folder):
    """The tiny models saved in the layout of a Wan diffusers repo (vae/, text_encoder/, tokenizer/)."""
    build_tiny_vae(TINY).save_pretrained(folder / "vae")
    build_tiny_encoder(TINY).save_pretrained(folder / "text_encoder")
    save_tiny_tokenizer(folder / "tokenizer", TINY)
    return Profile("local", "wan2.1-t2v", str(folder), latent_channels=16, text_dim=32)


def test_folder_fingerprint_is_memoized_by_size_and_mtime(tmp_path, monkeypatch):
    d = tmp_path / "w"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"a" * 1000)
    (d / "config.json").write_text("{}")
    calls = []
    real = fp_mod.sha256_file
    monkeypatch.setattr(fp_mod, "sha256_file", lambda p: calls.append(p) or real(p))
    memo_path = tmp_path / "memo.json"
    first = folder_fingerprint(d, FileHashMemo(memo_path))
    assert len(calls) == 2 and memo_path.exists()
    assert folder_fingerprint(d, FileHashMemo(memo_path)) == first and len(calls) == 2  # from the memo, no re-hash
    (d / "model.safetensors").write_bytes(b"b" * 1001)
    assert folder_fingerprint(d, FileHashMemo(memo_path)) != first and len(calls) == 3  # only the changed file


def test_local_folder_profile_loads_with_from_pretrained_and_encodes(tmp_path):
    prof = local_weights(tmp_path / "weights")
    vae = load_vae(prof)
    torch.testing.assert_close(vae.state_dict()["quant_conv.weight"], build_tiny_vae(TINY).state_dict()["quant_conv.weight"])
    tok, enc = load_text_encoder(prof)
    assert enc.config.d_model == 32 and tok("a cat")["input_ids"][-1] == tok.eos_token_id
    fp = vae_fingerprint(prof)
    assert fp != vae_fingerprint(TINY) and fp == vae_fingerprint(prof)

    ds, caps = small_dataset(tmp_path)
    cfg = EncodeConfig(frame_buckets=(17,), area=32 * 32, image_area=32 * 32, device="cpu")
    r = encode_dataset(ds, caps, CacheStore(tmp_path / "cache"), prof, cfg, root=tmp_path)
    assert r.metrics["latents_computed"] == 4 and r.metrics["texts_computed"] == 4
    assert r.table["vae"].str.starts_with(str(tmp_path / "weights")).all()
    # the same weights under another name and path are the same models: the keys do not change
    (tmp_path / "weights").rename(tmp_path / "moved")
    moved = Profile("moved", "wan2.1-t2v", str(tmp_path / "moved"), latent_channels=16, text_dim=32)
    r2 = encode_dataset(ds, caps, CacheStore(tmp_path / "cache"), moved, cfg, root=tmp_path)
    assert (r2.metrics["latents_computed"], r2.metrics["texts_computed"]) == (0, 0)
    assert r2.table["latent_key"].equals(r.table["latent_key"])


def test_missing_weights_say_where(tmp_path):
    prof = Profile("x", "wan2.1-t2v", str(tmp_path), latent_channels=16, text_dim=32)
    with pytest.raises(FileNotFoundError, match="no 'vae' subfolder"):
        load_vae(prof)
    offline = get_profile("wan2.1-t2v-1.3b", "nobody/not-a-cached-repo")
    with pytest.raises(FileNotFoundError, match="model.path"):
        vae_fingerprint(offline)


def test_profile_shape_mismatch_is_refused(tmp_path):
    prof = local_weights(tmp_path / "w")
    wrong = Profile("wrong", "wan2.1-t2v", prof.repo, latent_channels=48, text_dim=32)
    with pytest.raises(ValueError, match="z_dim"):
        load_vae(wrong)


@pytest.fixture
def transformers_messages():
    """Every record of the ``transformers`` loggers (they do not propagate to the root) and every warning."""
    import logging
    import warnings

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("transformers")
    handler = Keep(logging.DEBUG)
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield records, caught
    logger.removeHandler(handler)


@pytest.mark.parametrize("name", [n for n in PROFILES if n.startswith("tiny")])
def test_tiny_text_encoders_take_512_tokens_as_wan_does(name):
    prof = get_profile(name)
    tok, _ = load_text_encoder(prof)
    assert prof.max_text_tokens == 512 == tok.model_max_length == get_profile("wan2.1-t2v-1.3b").max_text_tokens


def test_a_300_token_caption_is_embedded_whole_without_warnings(transformers_messages):
    """The demo's captions (up to ~400 bytes, one tiny token a byte) fit; a longer one is cut at 512 and
    flagged, without transformers' "longer than the specified maximum sequence length" warning."""
    records, caught = transformers_messages
    tok, enc = load_text_encoder(TINY)
    caption = ("a red bike on a dirt road " * 12).strip()  # 311 bytes: 312 tokens of the byte-level tokenizer
    long = "x" * 700
    assert len(tok(caption)["input_ids"]) > 300
    (emb, cut), flags = encode_prompts(tok, enc, [caption, long], TINY.max_text_tokens)
    assert flags == [False, True]
    assert emb.shape == (len(tok(caption)["input_ids"]), TINY.text_dim) and emb.shape[0] > 300
    assert cut.shape == (512, TINY.text_dim)
    problems = [m for m in records if "length" in m or "truncat" in m.lower()] + [str(w.message) for w in caught]
    assert problems == []
