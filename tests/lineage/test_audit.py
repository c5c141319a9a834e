"""vlp audit: the clips of a LoRA, tamper detection, --source / --clip lookups, --diff."""

import json

import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from pipeline.cli import main as vlp
from pipeline.core import schemas
from pipeline.core.fs import sha256_file
from pipeline.lineage import audit
from tests.helpers.fake_runs import manifest_row, write_run


@pytest.fixture
def lora_dir(tmp_path):
    """Two runs: A trains on clips c1, c2 (two windows), c3 (held out) of two videos; B drops c1, re-captions c2,
    adds c4 of a third source. A fourth video exists on disk but no run used it."""
    raw = tmp_path / "raw"
    raw.mkdir()
    srcs = {}
    for name in ("alice.mp4", "bob.mp4", "carol.mp4", "unused.mp4"):
        (raw / name).write_bytes(name.encode() * 100)
        srcs[name] = sha256_file(raw / name)
    a_rows = [
        manifest_row("c1" + "0" * 62, srcs["alice.mp4"], "alice.mp4", caption="a woman waves"),
        manifest_row("c2" + "0" * 62, srcs["bob.mp4"], "bob.mp4", window=0, caption="a man runs", start_frame=10, end_frame=90),
        manifest_row("c2" + "0" * 62, srcs["bob.mp4"], "bob.mp4", window=1, caption="a man runs", start_frame=10, end_frame=90),
        manifest_row("c3" + "0" * 62, srcs["bob.mp4"], "bob.mp4", caption="a dog", held_out=True),
    ]
    b_rows = [
        manifest_row("c2" + "0" * 62, srcs["bob.mp4"], "bob.mp4", caption="a man jogs in a park", caption_source="edit",
                     start_frame=10, end_frame=90),
        manifest_row("c3" + "0" * 62, srcs["bob.mp4"], "bob.mp4", caption="a dog"),
        manifest_row("c4" + "0" * 62, srcs["carol.mp4"], "carol.mp4", caption="a cat portrait", kind="image"),
    ]
    loras = tmp_path / "lora"
    write_run(loras / "run_a", a_rows)
    write_run(loras / "run_b", b_rows, rank=8)
    return {"dir": loras, "raw": raw, "srcs": srcs, "a": loras / "run_a" / "run_a.safetensors",
            "b": loras / "run_b" / "run_b.safetensors"}


def test_audit_lists_exactly_the_training_clips(lora_dir, capsys):
    assert vlp(["audit", str(lora_dir["a"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] is True
    assert out["metadata"]["vlp.run_name"] == "run_a"
    clips = {c["clip_id"][:2]: c for c in out["clips"]}
    assert set(clips) == {"c1", "c2", "c3"}
    assert clips["c2"]["samples"] == 2 and len(clips["c2"]["latent_keys"]) == 2
    assert clips["c2"]["start_frame"] == 10 and clips["c2"]["end_frame"] == 90
    assert clips["c2"]["times_seen"] == 6
    assert clips["c3"]["held_out"] is True and clips["c1"]["held_out"] is False
    assert clips["c1"]["source_path"] == "alice.mp4" and clips["c1"]["edited"] is False
    assert len(out["samples"]) == 4

    assert vlp(["audit", str(lora_dir["a"])]) == 0
    text = capsys.readouterr().out
    assert "OK (matches the LoRA)" in text and "3 (2 trained, 1 held out), 4 samples" in text
    for c in ("c10000000000", "c20000000000", "c30000000000", "alice.mp4", "a woman waves", "10-90"):
        assert c in text


def test_tampered_or_missing_manifest_is_an_error(lora_dir, capsys):
    manifest = lora_dir["a"].parent / "manifest.parquet"
    df = schemas.read_table(manifest, "manifest")
    # Someone quietly removes a clip from the list after training.
    schemas.write_table(df.filter(pl.col("clip_id").str.starts_with("c1").not_()), manifest, "manifest")
    assert vlp(["audit", str(lora_dir["a"])]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(manifest) in err and "does not match" in err
    with pytest.raises(audit.AuditError):
        audit.open_run(lora_dir["a"])
    # A scan still reports the run, flagged.
    runs, problems = audit.find_runs(lora_dir["dir"])
    flagged = {r.name: r.verified for r in runs}
    assert flagged == {"run_a": False, "run_b": True} and problems == []

    manifest.unlink()
    assert vlp(["audit", str(lora_dir["a"])]) == 1
    err = capsys.readouterr().err.strip()
    assert "manifest missing" in err and str(manifest) in err
    assert vlp(["audit", str(lora_dir["dir"] / "nope.safetensors")]) == 1
    assert "not found" in capsys.readouterr().err
    plain = lora_dir["dir"] / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    assert vlp(["audit", str(plain)]) == 1
    assert "no vlp.manifest_sha256" in capsys.readouterr().err


def test_source_lookup_by_file_id_prefix_and_path(lora_dir, capsys):
    raw, d = lora_dir["raw"], str(lora_dir["dir"])
    assert vlp(["audit", "--source", str(raw / "alice.mp4"), "--lora-dir", d, "--json"]) == 0
    used = json.loads(capsys.readouterr().out)["used_by"]
    assert [u["run"] for u in used] == ["run_a"]
    assert [c[:2] for c in used[0]["clips"]] == ["c1"]

    bob = lora_dir["srcs"]["bob.mp4"]
    assert vlp(["audit", "--source", bob[:10], "--lora-dir", d, "--json"]) == 0
    used = json.loads(capsys.readouterr().out)["used_by"]
    assert sorted(u["run"] for u in used) == ["run_a", "run_b"]
    assert {u["run"]: u["trained_samples"] for u in used} == {"run_a": 2, "run_b": 2}

    assert vlp(["audit", "--source", "carol.mp4", "--lora-dir", d, "--json"]) == 0
    assert [u["run"] for u in json.loads(capsys.readouterr().out)["used_by"]] == ["run_b"]
    # The file is gone already: its path as probe recorded it (or under the raw folder) still finds it.
    assert vlp(["audit", "--source", "data/raw/carol.mp4", "--lora-dir", d, "--json"]) == 0
    assert [u["run"] for u in json.loads(capsys.readouterr().out)["used_by"]] == ["run_b"]

    # A video no run used: nothing found, and it says so.
    assert vlp(["audit", "--source", str(raw / "unused.mp4"), "--lora-dir", d, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["used_by"] == []
    assert vlp(["audit", "--source", str(raw / "unused.mp4"), "--lora-dir", d]) == 0
    assert "no LoRA under" in capsys.readouterr().out

    assert vlp(["audit", "--source", str(raw / "alice.mp4"), "--lora-dir", d]) == 0
    text = capsys.readouterr().out
    assert "1 of 2 LoRAs" in text and str(lora_dir["a"]) in text and str(lora_dir["b"]) not in text


def test_clip_lookup(lora_dir, capsys):
    d = str(lora_dir["dir"])
    assert vlp(["audit", "--clip", "c3" + "0" * 62, "--lora-dir", d, "--json"]) == 0
    used = {u["run"]: u for u in json.loads(capsys.readouterr().out)["used_by"]}
    assert set(used) == {"run_a", "run_b"}
    assert used["run_a"]["trained_samples"] == 0 and used["run_b"]["trained_samples"] == 1
    assert vlp(["audit", "--clip", "c4", "--lora-dir", d, "--json"]) == 0
    assert [u["run"] for u in json.loads(capsys.readouterr().out)["used_by"]] == ["run_b"]
    assert vlp(["audit", "--clip", "ffff", "--lora-dir", d, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["used_by"] == []


def test_diff(lora_dir, capsys):
    assert vlp(["audit", "--diff", str(lora_dir["a"]), str(lora_dir["b"]), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["clip_id"][:2] for r in d["added"]] == ["c4"]
    assert [r["clip_id"][:2] for r in d["removed"]] == ["c1"]
    assert [(r["clip_id"][:2], r["caption_a"], r["caption_b"], r["caption_source_b"]) for r in d["recaptioned"]] == [
        ("c2", "a man runs", "a man jogs in a park", "edit")]
    assert [(r["clip_id"][:2], r["held_out_a"], r["held_out_b"]) for r in d["held_out_changed"]] == [("c3", True, False)]
    assert d["settings"]["vlp.rank"] == ["4", "8"]

    assert vlp(["audit", "--diff", str(lora_dir["a"]), str(lora_dir["b"])]) == 0
    text = capsys.readouterr().out
    assert "added 1, removed 1, re-captioned 1" in text and "a man jogs in a park" in text


def test_cli_is_registered(lora_dir, capsys):
    assert vlp(["audit", str(lora_dir["b"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {c["kind"] for c in out["clips"]} == {"video", "image"}
    assert vlp(["audit"]) == 2  # a usage error: one of LORA, --source, --clip, --diff
