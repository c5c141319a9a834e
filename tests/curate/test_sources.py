"""Source records (data/raw/sources.yaml and <file>.yaml sidecars): carried onto sources.parquet by the probe
stage, precedence, withdrawal, a re-run when they change, and bad records as one-line errors naming the file
and line while everything else goes on."""

import logging
import os
import shutil
import threading

import polars as pl
import pytest
import yaml

from pipeline.core import schemas
from pipeline.core.fs import sha256_file
from pipeline.core.layout import Layout
from pipeline.core.samples import SAMPLE_RECORDS, sample_photo, sample_records, sample_video
from pipeline.curate.probe import records as rec
from pipeline.curate.probe.stage import run_list, run_probe

SAMPLES = {"bikes.mp4": sample_video, "carphone_pristine.mp4": sample_video, "bigbuckbunny.mp4": sample_video,
           "photos/astronaut.png": sample_photo, "photos/chelsea.png": sample_photo, "photos/coffee.png": sample_photo}


def _raw(tmp_path, names=tuple(SAMPLES)):
    raw = tmp_path / "raw"
    for rel in names:
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES[rel](rel.split("/")[-1]), raw / rel)
    return raw


def _probe(tmp_path, raw) -> pl.DataFrame:
    lay = Layout.of(tmp_path / "data")
    params = {"probe": {"raw_dir": str(raw)}}
    run_list(params, lay)
    run_probe(params, lay)
    return schemas.read_table(lay.sources, "sources")


def _by_path(sources: pl.DataFrame) -> dict[str, dict]:
    return {r["path"]: r for r in sources.to_dicts()}


def test_sample_records_reach_the_sources_table(tmp_path):
    raw = _raw(tmp_path)
    (raw / "sources.yaml").write_text(sample_records(list(SAMPLES)))
    rows = _by_path(_probe(tmp_path, raw))
    assert set(rows) == set(SAMPLES)  # sources.yaml is not a source
    astronaut = rows["photos/astronaut.png"]
    assert (astronaut["owner"], astronaut["licence"], astronaut["consent"], astronaut["subject"]) == \
        ("NASA", "public domain", "unknown", "Eileen Collins")
    assert astronaut["record"] == "sources.yaml:21"
    assert {p: r["consent"] for p, r in rows.items()} == {p: SAMPLE_RECORDS[p]["consent"] for p in SAMPLES}
    assert rows["bigbuckbunny.mp4"]["licence"] == "CC-BY-3.0"


def test_precedence_sidecar_glob_and_withdrawal(tmp_path):
    raw = _raw(tmp_path, ["photos/astronaut.png", "photos/chelsea.png", "photos/coffee.png", "carphone_pristine.mp4"])
    (raw / "sources.yaml").write_text(
        '"photos/*":\n  owner: Photo Library\n  licence: CC0-1.0\n  consent: yes\n'
        "photos/coffee.png:\n  notes: a cup\n"
        "carphone_pristine.mp4:\n  consent: withdrawn\n  withdrawn_on: 2026-11-30\n  withdrawn_reason: asked\n")
    (raw / "photos/chelsea.png.yaml").write_text("consent: no\nsubject: a cat\n")
    (raw / "carphone_pristine.mp4.yaml").write_text("consent: yes\nowner: Someone\n")  # a withdrawal wins anyway
    rows = _by_path(_probe(tmp_path, raw))
    assert rows["photos/astronaut.png"]["consent"] == "yes" and rows["photos/astronaut.png"]["owner"] == "Photo Library"
    assert rows["photos/coffee.png"]["notes"] == "a cup" and rows["photos/coffee.png"]["licence"] == "CC0-1.0"
    assert rows["photos/coffee.png"]["record"] == "sources.yaml:1, sources.yaml:5"
    chelsea = rows["photos/chelsea.png"]
    assert (chelsea["consent"], chelsea["subject"], chelsea["owner"]) == ("no", "a cat", "Photo Library")
    car = rows["carphone_pristine.mp4"]
    assert (car["consent"], car["withdrawn_on"], car["withdrawn_reason"], car["owner"]) == ("withdrawn", "2026-11-30", "asked", "Someone")


def test_a_record_by_source_id_follows_the_bytes(tmp_path):
    raw = _raw(tmp_path, ["photos/astronaut.png"])
    sid = sha256_file(raw / "photos/astronaut.png")
    os.rename(raw / "photos/astronaut.png", raw / "photos/renamed.png")
    (raw / "sources.yaml").write_text(f"photos/astronaut.png:\n  consent: withdrawn\n  source_id: {sid}\n")
    rows = _by_path(_probe(tmp_path, raw))
    assert rows["photos/renamed.png"]["consent"] == "withdrawn"


def test_no_record_means_consent_unknown(tmp_path):
    raw = _raw(tmp_path, ["photos/coffee.png"])
    row = _by_path(_probe(tmp_path, raw))["photos/coffee.png"]
    assert (row["consent"], row["owner"], row["licence"], row["record"]) == ("unknown", "", "", "")


def test_editing_the_records_changes_the_listing(tmp_path):
    """The probe stage depends on the listing only: a changed sources.yaml or sidecar must change it."""
    raw = _raw(tmp_path, ["photos/coffee.png"])
    lay = Layout.of(tmp_path / "data")
    params = {"probe": {"raw_dir": str(raw)}}
    seen = []
    for step in ("none", "file", "edited", "sidecar"):
        if step == "file":
            (raw / "sources.yaml").write_text("photos/coffee.png:\n  consent: yes\n")
        elif step == "edited":
            (raw / "sources.yaml").write_text("photos/coffee.png:\n  consent: no\n")
        elif step == "sidecar":
            (raw / "photos/coffee.png.yaml").write_text("notes: x\n")
        run_list(params, lay)
        seen.append(lay.listing.read_text())
    assert len(set(seen)) == 4
    run_list(params, lay)
    assert lay.listing.read_text() == seen[-1]  # unchanged records: the same listing, probe is not re-run


BAD = [
    ("unknown key", "photos/coffee.png:\n  owner: A\n  license: CC0-1.0\n", 3, "unknown key 'license' (did you mean 'licence'?)"),
    ("bad consent", "photos/coffee.png:\n  consent: maybe\n", 2, "consent 'maybe' is not one of yes, no, unknown, withdrawn"),
    ("glob matching nothing", "photos/coffee.png:\n  consent: yes\n'*.mkv':\n  consent: yes\n", 3,
     "glob '*.mkv' matches no file under"),
    ("path naming nothing", "photos/coffee.png:\n  consent: yes\nmissing.mp4:\n  owner: B\n", 3, "'missing.mp4' names no file"),
    ("invalid YAML", "photos/coffee.png:\n  consent: yes\n  notes: [unclosed\n", 4, "invalid YAML"),
    ("unquoted glob", "*.png:\n  consent: yes\n", 1, 'quote a glob that starts with "*"'),
    ("not a mapping", "- photos/coffee.png\n", 1, "expected a mapping of path or glob -> record, got a list"),
    ("record not a mapping", "photos/coffee.png: yes\n", 1, "expected a mapping of owner, licence"),
    ("value not text", "photos/coffee.png:\n  notes: [a, b]\n", 2, "notes must be text, got a list"),
    ("repeated path", "photos/coffee.png:\n  consent: yes\nphotos/coffee.png:\n  consent: no\n", 3, "repeats the record at line 1"),
]


@pytest.mark.parametrize("name,text,line,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, caplog, name, text, line, message):
    raw = _raw(tmp_path, ["photos/coffee.png", "photos/chelsea.png"])
    (raw / "sources.yaml").write_text(text)
    (raw / "photos/chelsea.png.yaml").write_text("consent: yes\nowner: C\n")  # a good record elsewhere still applies
    with caplog.at_level(logging.ERROR):
        rows = _by_path(_probe(tmp_path, raw))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    assert errors[0].startswith(f"{raw / 'sources.yaml'}:{line}: "), errors[0]
    assert message in errors[0], errors[0]
    assert rows["photos/chelsea.png"]["consent"] == "yes" and rows["photos/chelsea.png"]["owner"] == "C"
    assert set(rows) == {"photos/coffee.png", "photos/chelsea.png"} and all(r["status"] == "ok" for r in rows.values())


def test_a_bad_sidecar_names_its_file_and_line(tmp_path, caplog):
    raw = _raw(tmp_path, ["photos/coffee.png"])
    (raw / "photos/coffee.png.yaml").write_text("owner: A\nconsent: perhaps\n")
    with caplog.at_level(logging.ERROR):
        row = _by_path(_probe(tmp_path, raw))["photos/coffee.png"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{raw / 'photos/coffee.png.yaml'}:2: sidecar: consent 'perhaps' is not one of yes, no, unknown, withdrawn"]
    assert row["consent"] == "unknown" and row["owner"] == ""  # a half-understood record never applies


def test_a_fifo_named_sources_yaml_does_not_block(tmp_path, caplog):
    raw = _raw(tmp_path, ["photos/coffee.png"])
    os.mkfifo(raw / "sources.yaml")
    done = []
    t = threading.Thread(target=lambda: done.append(_probe(tmp_path, raw)), daemon=True)
    with caplog.at_level(logging.ERROR):
        t.start()
        t.join(60)
    assert done, "probe blocked on a FIFO named sources.yaml"
    assert any("sources.yaml: not a regular file" in r.getMessage() for r in caplog.records)


def test_globs():
    match = lambda pattern, path: bool(rec.Record(pattern, {}, "f", 1).matches(path))  # noqa: E731
    assert match("*.mp4", "a.mp4") and not match("*.mp4", "x/a.mp4")
    assert match("**/*.mp4", "a.mp4") and match("**/*.mp4", "x/y/a.mp4")
    assert match("people/**", "people/a/b.png") and not match("people/**", "other/a.png")
    assert match("clip_?.mov", "clip_1.mov") and not match("clip_?.mov", "clip_10.mov")
    assert match("[ab].png", "a.png") and not match("[!ab].png", "a.png")
    assert match("photos/a.png", "photos/a.png") and not match("photos/a.png", "photos/a.png.bak")


def test_set_record_keeps_the_other_records_and_comments():
    text = ("# the records\n"
            "a.mp4:   # Alice\n  owner: Alice\n  consent: yes\n\n"
            "# Bob, by email\n"
            "b.mp4:\n  owner: Bob\n  consent: yes\n"
            '"*.png":\n  licence: CC0-1.0\n')
    new = rec.set_record(text, "a.mp4", {"owner": "Alice", "consent": "withdrawn", "withdrawn_on": "2026-12-01"})
    assert new.startswith("# the records\na.mp4:\n  owner: Alice\n  consent: withdrawn\n  withdrawn_on: '2026-12-01'\n\n"
                          "# Bob, by email\nb.mp4:\n")
    data = yaml.safe_load(new)
    assert data["b.mp4"] == {"owner": "Bob", "consent": True} and data["*.png"] == {"licence": "CC0-1.0"}
    added = rec.set_record(new, "c.mp4", {"consent": "withdrawn"})
    assert added.startswith(new) and yaml.safe_load(added)["c.mp4"] == {"consent": "withdrawn"}
    flow = rec.set_record("{a.mp4: {consent: yes}}\n", "a.mp4", {"consent": "withdrawn"})  # rewritten whole
    assert yaml.safe_load(flow) == {"a.mp4": {"consent": "withdrawn"}}
