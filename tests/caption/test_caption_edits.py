"""Bad input to the human caption edits: an edits file that is not UTF-8, clip ids that name no
kept clip, a clip no longer kept, no kept-clips table."""

from __future__ import annotations

import pytest

from pipeline.caption.edits import EditsError, read_edits
from pipeline.cli import main as vlp
from tests.helpers.caption_helpers import dataset, dataset_row


def test_edits_file_that_is_not_utf8_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "captions_edits.csv"
    bad.write_bytes(b"clip_id,caption\n275369bf6752102a,A man in a caf\xe9.\n")
    with pytest.raises(EditsError, match=r"captions_edits.csv:2: not UTF-8 \(byte 0xe9 at offset 47\)"):
        read_edits(bad)
    data = kept_table(tmp_path)
    assert vlp(["caption", "edit", "275369bf6752102a", "A man.", "--edits", str(bad), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}:2: not UTF-8" in err


KEPT = ["275369bf6752102a", "2753aa0000000000", "abcdef0123456789"]
DROPPED = "dddd000000000000"


def kept_table(tmp_path):
    """A data folder whose dataset.parquet keeps KEPT (status ok) and not DROPPED."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    rows = [dataset_row(cid, "image", tmp_path / f"{cid}.png", 0.0, 1, 8, 8) for cid in [*KEPT, DROPPED]]
    rows[-1]["status"] = "error"
    dataset(rows).write_parquet(data / "dataset.parquet")
    return data


@pytest.mark.parametrize(("clip_id", "message"), [
    ("ffffffffffffffff", "no kept clip in"),
    (DROPPED, "no kept clip in"),
    ("../etc/passwd", "looks like a path"),
    ("275369bf/6752102a", "looks like a path"),
    ("..", "looks like a path"),
    ("a\\b", "looks like a path"),
    ("", "looks like a path"),
    ("275369BF6752102A", "is not a clip id"),
    ("bikes1", "is not a clip id"),
    ("275369bf6752102a0", "is not a clip id"),
    ("275369bf 6752102a", "is not a clip id"),
    ("275", "is too short"),
    ("2753", "is ambiguous in"),
])
def test_edit_rejects_ids_of_no_kept_clip(tmp_path, capsys, clip_id, message):
    data = kept_table(tmp_path)
    edits = tmp_path / "captions_edits.csv"
    assert vlp(["caption", "edit", clip_id, "A caption.", "--edits", str(edits), "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vlp caption edit: ") and message in err and err.count("\n") == 1, err
    assert not edits.exists()
    if message == "is ambiguous in":
        assert "275369bf6752102a, 2753aa0000000000" in err


def test_edit_resolves_a_unique_prefix(tmp_path, capsys):
    data = kept_table(tmp_path)
    edits = tmp_path / "captions_edits.csv"
    opts = ["--edits", str(edits), "--data", str(data)]
    assert vlp(["caption", "edit", "27536", "A man rides a bike.", *opts]) == 0
    assert vlp(["caption", "edit", "abcd", "A dog.", *opts]) == 0
    assert vlp(["caption", "edit", "2753aa0000000000", "A cat.", *opts]) == 0
    assert read_edits(edits) == {"275369bf6752102a": "A man rides a bike.", "abcdef0123456789": "A dog.",
                                 "2753aa0000000000": "A cat."}
    assert "caption of 275369bf6752102a set" in capsys.readouterr().out
    assert vlp(["caption", "edit", "abcdef", "", *opts]) == 0  # removal takes a prefix too
    assert "abcdef0123456789" not in read_edits(edits)


def test_edit_of_a_clip_no_longer_kept_can_be_removed(tmp_path):
    data = kept_table(tmp_path)
    edits = tmp_path / "captions_edits.csv"
    edits.write_text(f"clip_id,caption\n{DROPPED},A stale caption.\n275369bf6752102a,A man.\n")
    opts = ["--edits", str(edits), "--data", str(data)]
    assert vlp(["caption", "edit", DROPPED, "A new caption.", *opts]) == 1  # not kept: no new edit
    assert vlp(["caption", "edit", DROPPED, "", *opts]) == 0
    assert read_edits(edits) == {"275369bf6752102a": "A man."}


def test_edit_without_the_kept_clips_table_is_a_clear_error(tmp_path, capsys):
    edits = tmp_path / "captions_edits.csv"
    assert vlp(["caption", "edit", "275369bf6752102a", "A man.", "--edits", str(edits), "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'dataset.parquet'}: not found" in err and err.count("\n") == 1
    assert not edits.exists()
