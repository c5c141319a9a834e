"""vlp withdraw and the consent side of vlp audit: the record written (others kept), the LoRAs named,
--withdrawn, --source with its consent record, a LoRA's vlp.consent checked against its manifest, and
manifests written before the consent columns existed."""

import datetime as dt
import json
import shutil

import polars as pl
import pytest
import yaml
from safetensors.torch import load_file, save_file

from pipeline.cli import main as vlp
from pipeline.core import consent
from pipeline.core.fs import sha256_file
from pipeline.lineage import audit, takedown
from tests.helpers.fake_runs import manifest_row, write_run

RECORDS = """\
# who is in the data
alice.mp4:   # by email, 2026-10-01
  owner: Alice
  licence: CC-BY-4.0
  consent: yes
  subject: Alice

# the crew
"b*.mp4":
  owner: Studio
  consent: yes
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """raw/ with three videos and their records; run_a used alice and bob, run_b bob only (and a snapshot of run_a)."""
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data/raw"
    raw.mkdir(parents=True)
    ids = {}
    for name in ("alice.mp4", "bob.mp4", "carol.mp4"):
        (raw / name).write_bytes(name.encode() * 200)
        ids[name] = sha256_file(raw / name)
    (raw / "sources.yaml").write_text(RECORDS)
    lora = tmp_path / "data/lora"
    a = write_run(lora / "run_a", [
        manifest_row("a1" + "0" * 14, ids["alice.mp4"], "alice.mp4", consent="yes", licence="CC-BY-4.0", face_share=1.0, face=True),
        manifest_row("b1" + "0" * 14, ids["bob.mp4"], "bob.mp4", consent="yes", face_share=0.0, face=False),
    ])
    (lora / "run_a/snapshots").mkdir()
    shutil.copy(a, lora / "run_a/snapshots/run_a-step00005.safetensors")
    write_run(lora / "run_b", [manifest_row("b2" + "0" * 14, ids["bob.mp4"], "bob.mp4", consent="yes")])
    return {"raw": raw, "ids": ids, "lora": lora}


def test_withdraw_records_it_keeps_the_rest_and_names_every_lora(project, capsys):
    assert vlp(["withdraw", "data/raw/alice.mp4", "--reason", "asked  by\nemail"]) == 0
    out = capsys.readouterr().out
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert f"alice.mp4 ({project['ids']['alice.mp4'][:12]}): consent withdrawn on {today} (asked by email)" in out
    assert "2 LoRA(s) under data/lora used it and must be retrained or deleted" in out
    assert "data/lora/run_a/run_a.safetensors" in out and "snapshots/run_a-step00005.safetensors" in out
    assert "run_b" not in out and "dvc repro" in out
    text = (project["raw"] / "sources.yaml").read_text()
    assert text.startswith("# who is in the data\nalice.mp4:\n  owner: Alice\n")
    assert "# the crew\n" in text  # the other records and their comments are kept
    data = yaml.safe_load(text)
    assert data["alice.mp4"] == {"owner": "Alice", "licence": "CC-BY-4.0", "consent": "withdrawn", "subject": "Alice",
                                 "withdrawn_on": today, "withdrawn_reason": "asked by email",
                                 "source_id": project["ids"]["alice.mp4"]}
    assert data["b*.mp4"] == {"owner": "Studio", "consent": True}

    assert vlp(["withdraw", "alice.mp4"]) == 0  # again: nothing changes
    assert "already withdrawn" in capsys.readouterr().out
    assert (project["raw"] / "sources.yaml").read_text() == text


def test_withdraw_by_id_prefix_and_of_a_source_matched_by_a_glob(project, capsys):
    assert vlp(["withdraw", project["ids"]["bob.mp4"][:10]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bob.mp4 ") and "3 LoRA(s)" in out  # run_a, its snapshot, run_b
    data = yaml.safe_load((project["raw"] / "sources.yaml").read_text())
    assert data["bob.mp4"]["consent"] == "withdrawn" and data["b*.mp4"]["consent"] is True  # the glob is left alone
    recs, errors = takedown.rec.load_records(project["raw"], ["bob.mp4"])
    assert not errors and takedown.rec.resolve(recs, "bob.mp4")["owner"] == "Studio"  # the glob's fields still apply


def test_withdraw_a_copy_outside_the_raw_folder_and_a_deleted_file(project, tmp_path, capsys):
    copy = tmp_path / "elsewhere.mp4"
    shutil.copy(project["raw"] / "carol.mp4", copy)
    assert vlp(["withdraw", str(copy)]) == 1  # no sources.parquet, no LoRA with those bytes: cannot tell which source
    assert "not under the raw folder" in capsys.readouterr().err
    (project["raw"] / "alice.mp4").unlink()
    assert vlp(["withdraw", "alice.mp4"]) == 0  # gone from disk: its id comes from the LoRA manifests
    assert yaml.safe_load((project["raw"] / "sources.yaml").read_text())["alice.mp4"]["source_id"] == project["ids"]["alice.mp4"]
    capsys.readouterr()


def test_audit_withdrawn_and_source_records(project, capsys):
    assert vlp(["audit", "--withdrawn"]) == 0
    assert "no LoRA under data/lora holds a withdrawn source" in capsys.readouterr().out
    assert vlp(["withdraw", "alice.mp4", "--reason", "takedown"]) == 0
    capsys.readouterr()
    assert vlp(["audit", "--withdrawn", "--json"]) == 0
    held = json.loads(capsys.readouterr().out)["holding_withdrawn"]
    assert sorted(h["lora"] for h in held) == ["data/lora/run_a/run_a.safetensors",
                                               "data/lora/run_a/snapshots/run_a-step00005.safetensors"]
    assert held[0]["sources"][0] | {"clips": None} == {
        "path": "alice.mp4", "source_id": project["ids"]["alice.mp4"], "withdrawn_on": dt.datetime.now(dt.UTC).date().isoformat(),
        "withdrawn_reason": "takedown", "record": "sources.yaml:2", "clips": None, "trained": True}
    assert vlp(["audit", "--source", "alice.mp4"]) == 0
    out = capsys.readouterr().out
    assert "source alice.mp4" in out and "consent withdrawn on" in out and "(takedown)" in out and "owner Alice" in out
    assert vlp(["audit", "--source", "bob.mp4"]) == 0
    out = capsys.readouterr().out
    assert "consent yes; owner Studio; record sources.yaml:12" in out  # alice's entry grew by three lines


def test_a_withdrawal_in_sources_parquet_counts_too(project, capsys):
    """Records edited by hand since the last probe: the sources table of that probe still says withdrawn."""
    from pipeline.core import schemas

    row = {c: "" for c in schemas.SOURCES} | {"source_id": project["ids"]["bob.mp4"], "path": "bob.mp4", "kind": "video",
                                              "size_bytes": 1, "width": 1, "height": 1, "rotation": 0, "fps": 1.0,
                                              "vfr": False, "n_frames": 1, "duration_s": 1.0, "has_audio": False,
                                              "status": "ok", "consent": "withdrawn", "withdrawn_on": "2026-01-02"}
    schemas.write_table(schemas.frame("sources", [row]), "data/sources.parquet", "sources")
    assert vlp(["audit", "--withdrawn"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 LoRAs" in out and "bob.mp4" in out and "withdrawn on 2026-01-02" in out


def test_audit_shows_the_consent_summary_and_checks_it(project, capsys):
    lora = project["lora"] / "run_a/run_a.safetensors"
    run = audit.open_run(lora)
    summary = consent.summary(run.manifest)
    assert summary == {"clips": 2, "consent": {"yes": 2}, "licences": {"CC-BY-4.0": 1, consent.NO_LICENCE: 1},
                       "faces": True, "clips_with_face": 1, "faces_without_consent": 0, "face_not_measured": 0}
    tensors = load_file(str(lora))
    save_file(tensors, str(lora), metadata={**run.metadata, "vlp.consent": json.dumps(summary)})
    assert vlp(["audit", str(lora)]) == 0
    out = capsys.readouterr().out
    assert "consent   2 clips: consent yes 2; licences CC-BY-4.0 1, none recorded 1; faces in 1 clip(s)" in out
    assert "WARNING" not in out
    lie = {**summary, "faces": False, "clips_with_face": 0}
    save_file(tensors, str(lora), metadata={**run.metadata, "vlp.consent": json.dumps(lie)})
    assert vlp(["audit", str(lora)]) == 0
    assert "WARNING" in capsys.readouterr().out
    assert vlp(["audit", str(lora), "--json"]) == 0
    assert "vlp.consent says" in json.loads(capsys.readouterr().out)["consent_problem"]


def test_faces_without_consent_are_flagged(project, capsys):
    lora = write_run(project["lora"] / "run_c", [
        manifest_row("c1" + "0" * 14, project["ids"]["carol.mp4"], "carol.mp4", consent="unknown", face_share=0.5, face=True)])
    assert vlp(["audit", str(lora)]) == 0
    assert "WARNING   1 trained clip(s) show a face whose source's consent is not yes" in capsys.readouterr().out


def test_a_manifest_of_an_earlier_version_still_audits(project, capsys):
    folder = project["lora"] / "run_b"
    old = pl.read_parquet(folder / "manifest.parquet").drop("licence", "consent", "face_share", "face")
    old.write_parquet(folder / "manifest.parquet")
    lora = folder / "run_b.safetensors"
    tensors = load_file(str(lora))
    meta = audit.read_lora_metadata(lora) | {"vlp.manifest_sha256": sha256_file(folder / "manifest.parquet")}
    save_file(tensors, str(lora), metadata=meta)
    run = audit.open_run(lora)
    assert run.manifest["consent"].to_list() == ["unknown"] and run.manifest["face"].to_list() == [None]
    assert vlp(["audit", str(lora)]) == 0
    assert "not checked for faces" in capsys.readouterr().out
