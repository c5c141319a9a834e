"""Standard metadata of the LoRA files (kohya ``ss_*``, Stability's ``modelspec.*``, ``sshs_model_hash``)
beside the ``vlp.*`` keys, on tiny runs (CPU): a Wan 2.1 T2V run and a Wan 2.2 T2V-A14B run (two experts)."""

import hashlib
import json
import struct
import time
from datetime import datetime

import pytest
from safetensors import safe_open

from pipeline.core.fs import sha256_file
from pipeline.models.profiles import get_profile
from pipeline.train.metadata import base_model_version, model_id, tag_frequency, trigger_phrase
from pipeline.train.stage import run_from_params
from tests.helpers.train_data import make_dataset

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TRIGGER = "zq_style"
CLIPS = [{"clip_id": "v0", "frames": 9, "caption": f"{TRIGGER}, a red car drives by"},
         {"clip_id": "v1", "frames": 9, "width": 96, "windows": 2, "caption": f"{TRIGGER}, a dog runs, fast"},
         {"clip_id": "v2", "frames": 9, "caption": f"{TRIGGER}, rain on a window"},
         {"clip_id": "p0", "kind": "image", "frames": 1, "source": "photos/p0", "caption": f"{TRIGGER}, a portrait"}]
SS_KEYS = ["ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_learning_rate", "ss_max_train_steps", "ss_steps",
           "ss_timestep_sampling", "ss_discrete_flow_shift", "ss_output_name", "ss_base_model_version",
           "ss_training_started_at", "ss_training_finished_at", "ss_datasets", "ss_tag_frequency", "ss_seed",
           "ss_gradient_accumulation_steps", "ss_batch_size_per_device", "ss_lr_scheduler", "ss_optimizer"]
SPEC_KEYS = ["modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title",
             "modelspec.date", "modelspec.resolution", "modelspec.trigger_phrase", "modelspec.description",
             "modelspec.prediction_type"]


def params(**kw):
    base = dict(run_name="meta", steps=2, rank=4, alpha=8, lr=2e-2, base_storage="fp32", save_dtype="float32",
                held_out_fraction=0.0, held_out_clips=["v2"], eval_every=0, checkpoint_every=0, progress=False, seed=7,
                grad_accum=2, lr_scheduler="cosine", timestep_sampling="shift", shift=5.0)
    return {**base, **kw}


def train(root, profile):
    data = make_dataset(root, CLIPS, profile=get_profile(profile))
    before = time.time()
    run_from_params({"profile": profile, "path": None}, params(), cache_dir=str(data / "cache"), data_dir=str(data))
    return data / "lora" / "meta", int(before), time.time()


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    return train(tmp_path_factory.mktemp("t2v"), "tiny")


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return train(tmp_path_factory.mktemp("a14b"), "tiny-t2v-a14b")


def read_meta(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def tensor_data_hash(path):
    """sha256 of the file's bytes after the safetensors header, read back from disk (kohya's sshs_model_hash)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + n:]).hexdigest()


def check_common(meta, out, started, finished):
    for key in SS_KEYS + SPEC_KEYS:
        assert key in meta and isinstance(meta[key], str), key
    assert meta["ss_network_module"] == "networks.lora_wan"
    assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 8 and float(meta["ss_learning_rate"]) == 2e-2
    assert meta["ss_max_train_steps"] == "2" and meta["ss_steps"] == "2" and meta["ss_seed"] == "7"
    assert meta["ss_timestep_sampling"] == "shift" and float(meta["ss_discrete_flow_shift"]) == 5.0
    assert meta["ss_gradient_accumulation_steps"] == "2" and meta["ss_batch_size_per_device"] == "1"
    assert meta["ss_lr_scheduler"] == "cosine" and meta["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
    t0, t1 = int(meta["ss_training_started_at"]), int(meta["ss_training_finished_at"])
    assert started <= t0 <= t1 <= finished
    # the dataset: v0, v1 (two windows), p0 trained; v2 held out; one caption per clip, the trigger word first
    (ds,) = json.loads(meta["ss_datasets"])
    assert ds["num_clips"] == 3 and ds["num_samples"] == 4 and ds["num_videos"] == 3 and ds["num_images"] == 1
    assert ds["num_held_out"] == 1 and ds["batch_size_per_device"] == 1 and ds["resolution"] == [96, 64]
    assert ds["manifest_sha256"] == sha256_file(out / "manifest.parquet") == meta["vlp.manifest_sha256"]
    buckets = sorted((b["kind"], b["frames"], *b["resolution"], b["count"]) for b in ds["bucket_info"]["buckets"].values())
    assert buckets == [("image", 1, 64, 64, 1), ("video", 9, 64, 64, 1), ("video", 9, 96, 64, 2)]
    assert json.loads(meta["ss_tag_frequency"]) == {"dataset": {TRIGGER: 3}} and ds["tag_frequency"] == {TRIGGER: 3}
    # model spec
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.title"] == "meta"
    assert meta["modelspec.resolution"] == "96x64" and meta["modelspec.trigger_phrase"] == TRIGGER
    assert meta["modelspec.prediction_type"] == "flow" and "3 clips" in meta["modelspec.description"]
    assert datetime.fromisoformat(meta["modelspec.date"]).timestamp() == t1
    # the vlp keys are still there
    assert meta["vlp.format"] == "1" and meta["vlp.run_name"] == "meta" and meta["vlp.rank"] == "4"


def check_hashes(out, names):
    hashes = set()
    for name in names:
        meta = read_meta(out / name)
        digest = tensor_data_hash(out / name)
        assert meta["sshs_model_hash"] == digest and meta["modelspec.hash_sha256"] == f"0x{digest}", name
        assert "sshs_legacy_hash" not in meta
        hashes.add(digest)
    assert len(hashes) == len(names)  # one hash per file: the layouts hold other tensors


def test_t2v_files_carry_the_standard_metadata(t2v):
    out, started, finished = t2v
    names = ["meta.safetensors", "meta_comfy.safetensors"]
    for name in names:
        meta = read_meta(out / name)
        check_common(meta, out, started, finished)
        assert meta["ss_output_name"] == "meta" and meta["ss_base_model_version"] == "wan21_t2v_tiny"
        assert meta["ss_sd_model_name"] == "tiny" and meta["ss_min_timestep"] == "0" and meta["ss_max_timestep"] == "1000"
        assert meta["modelspec.architecture"] == "wan2.1-t2v-tiny/lora"
        assert meta["modelspec.implementation"] == "https://github.com/Wan-Video/Wan2.1"
        assert meta["modelspec.timestep_range"] == "0,1000"
    assert "lora_adapter_metadata" in read_meta(out / names[0]) and "lora_adapter_metadata" not in read_meta(out / names[1])
    check_hashes(out, names)


def test_a14b_files_name_their_expert(a14b):
    out, started, finished = a14b
    for expert, t_range in (("high", "875,1000"), ("low", "0,875")):
        names = [f"meta_{expert}_noise.safetensors", f"meta_{expert}_noise_comfy.safetensors"]
        for name in names:
            meta = read_meta(out / name)
            check_common(meta, out, started, finished)
            assert meta["vlp.expert"] == expert
            assert meta["ss_output_name"] == f"meta_{expert}_noise"
            assert meta["ss_base_model_version"] == f"wan22_t2v_a14b_tiny_{expert}"
            assert meta["modelspec.architecture"] == f"wan2.2-t2v-a14b-tiny-{expert}-noise/lora"
            assert meta["modelspec.implementation"] == "https://github.com/Wan-Video/Wan2.2"
            assert meta["modelspec.timestep_range"] == t_range and f"{expert}-noise expert" in meta["modelspec.description"]
        check_hashes(out, names)
    high, low = (read_meta(out / f"meta_{e}_noise.safetensors") for e in ("high", "low"))
    assert int(high["ss_training_finished_at"]) <= int(low["ss_training_started_at"])  # trained in turn


def test_names_of_real_profiles():
    assert model_id(get_profile("wan2.1-t2v-14b")) == "wan2.1-t2v-14b"
    assert base_model_version(get_profile("wan2.1-t2v-14b")) == "wan21_t2v_14b"
    assert base_model_version(get_profile("wan2.1-t2v-1.3b")) == "wan21_t2v_1.3b"
    assert base_model_version(get_profile("wan2.1-i2v-14b-480p")) == "wan21_i2v_14b_480p"
    assert base_model_version(get_profile("wan2.2-ti2v-5b")) == "wan22_ti2v_5b"
    assert base_model_version(get_profile("wan2.2-t2v-a14b"), "high") == "wan22_t2v_a14b_high"
    assert base_model_version(get_profile("wan2.2-i2v-a14b"), "low") == "wan22_i2v_a14b_low"


def test_tags_and_trigger_phrase():
    assert tag_frequency(["zq, a car", "zq, a dog, fast", "a cat", ""]) == {"zq": 2, "a cat": 1}
    assert trigger_phrase(["zq, a car", "zq , a dog"]) == "zq"
    assert trigger_phrase(["zq, a car"]) is None  # one clip: no telling a trigger from a caption
    assert trigger_phrase(["zq, a car", "zq"]) is None and trigger_phrase(["zq, a car", "xy, a dog"]) is None
