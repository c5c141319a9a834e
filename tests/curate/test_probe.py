import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.curate.probe.files import is_vfr, list_media, probe_file
from pipeline.curate.probe.table import probe_folder
from tests.helpers.synthetic_media import ffmpeg_binary, textured, write_video


def test_probe_real_samples(bikes, bunny, carphone):
    r = probe_file(bikes, bikes.parent)
    assert r["status"] == "ok", r["reason"]
    assert (r["path"], r["kind"], r["codec"]) == ("bikes.mp4", "video", "h264")
    assert (r["width"], r["height"], r["n_frames"]) == (640, 272, 250)
    assert r["fps"] == pytest.approx(25.0)
    assert r["duration_s"] == pytest.approx(10.0, abs=0.05)
    assert r["vfr"] is False and r["has_audio"] is False and r["rotation"] == 0
    assert len(r["source_id"]) == 64
    b = probe_file(bunny, bunny.parent)
    assert b["has_audio"] is True and (b["width"], b["height"]) == (1280, 720)
    c = probe_file(carphone, carphone.parent)
    assert c["fps"] == pytest.approx(30000 / 1001) and c["n_frames"] == 120


def _vfr_video(path: Path) -> Path:
    frame = textured(64, 96, 3)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(40):
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            t += 33 if i % 2 else 80  # alternating frame durations
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_vfr_detected(tmp_path):
    r = probe_file(_vfr_video(tmp_path / "vfr.mp4"), tmp_path)
    assert r["status"] == "ok" and r["vfr"] is True and r["n_frames"] == 40
    cfr = write_video(tmp_path / "cfr.mp4", [textured(64, 96, 1)] * 20)
    assert probe_file(cfr, tmp_path)["vfr"] is False


def test_is_vfr_tolerates_timebase_rounding():
    assert not is_vfr([0, 33, 67, 100, 133, 167, 200, 233])
    assert is_vfr([0, 33, 113, 146, 226, 259, 339])


def test_rotation_read(tmp_path):
    src = write_video(tmp_path / "plain.mp4", [textured(64, 96, 2)] * 10)
    rot = tmp_path / "rot.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(src), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(rot)], check=True)
    r = probe_file(rot, tmp_path)
    assert r["status"] == "ok" and r["rotation"] in (90, 270)


def make_bad_inputs(folder: Path, bikes: Path) -> dict[str, str]:
    """The bad inputs of the issue; returns file name -> expected reason fragment."""
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("this is not a video\n")
    data = bikes.read_bytes()
    (folder / "half.mp4").write_bytes(data[: len(data) // 2])
    # the first half of a real mp4 whose index sits up front (faststart): frames are missing
    fast = folder / "fast_full.tmp"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(bikes), "-c", "copy", "-movflags",
                    "+faststart", "-f", "mp4", str(fast)], check=True)
    blob = fast.read_bytes()
    (folder / "half_faststart.mp4").write_bytes(blob[: len(blob) // 2])
    fast.unlink()
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1",
                    "-c:a", "aac", str(folder / "audio_only.mp4")], check=True)
    return {"zero.mp4": "empty", "notes.mp4": "unreadable", "half.mp4": "unreadable",
            "half_faststart.mp4": "truncated", "audio_only.mp4": "no video stream"}


def test_bad_inputs_are_rejected_rows(tmp_path, bikes):
    expected = make_bad_inputs(tmp_path, bikes)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good.mp4").write_bytes(bikes.read_bytes())
    table = probe_folder(tmp_path)
    rows = {r["path"]: r for r in table.to_dicts()}
    assert set(rows) == set(expected) | {"sub/good.mp4"}
    for name, fragment in expected.items():
        assert rows[name]["status"] == "rejected", name
        assert fragment in rows[name]["reason"], (name, rows[name]["reason"])
        assert "\n" not in rows[name]["reason"]
    assert rows["sub/good.mp4"]["status"] == "ok"


def test_list_media_skips_hidden_and_non_media(tmp_path):
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.mp4").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "b.MOV").write_bytes(b"x")
    assert [p.name for p in list_media(tmp_path)] == ["b.MOV"]


def test_listing_never_opens_or_follows_what_it_should_not(tmp_path, carphone):
    """Symlink loops, dangling links and FIFOs are rejected rows, never a hang; a link out of the raw folder is
    followed only when asked; a link to a file inside it is that file's duplicate."""
    import os

    from pipeline.curate.probe.listing import list_raw
    from pipeline.curate.probe.table import probe_folder

    raw, outside = tmp_path / "raw", tmp_path / "elsewhere"
    (raw / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(carphone, raw / "a.mp4")
    shutil.copy(carphone, outside / "b.mp4")
    os.symlink("..", raw / "sub" / "up")
    os.symlink("missing.mp4", raw / "gone.mp4")
    os.mkfifo(raw / "pipe.mp4")
    os.symlink(outside / "b.mp4", raw / "out.mp4")
    os.symlink(outside, raw / "outdir")
    os.symlink("a.mp4", raw / "same.mp4")
    table = {r["path"]: (r["status"], r["reason"]) for r in probe_folder(raw).to_dicts()}
    assert table["a.mp4"] == ("ok", "")
    assert table["sub/up"] == ("rejected", "symlink loop")
    assert table["gone.mp4"][1].startswith("dangling symlink")
    assert table["pipe.mp4"] == ("rejected", "not a regular file (fifo)")
    assert table["out.mp4"][1].startswith("symlink to outside the raw folder")
    assert table["outdir"][1].startswith("symlink to a folder outside the raw folder")
    assert table["same.mp4"] == ("rejected", "duplicate of a.mp4")
    followed = {e.rel: e.status for e in list_raw(raw, follow_outside=True)}
    assert followed["out.mp4"] == "ok" and followed["outdir/b.mp4"] == "ok"


def test_probe_reuses_rows_of_unchanged_files(tmp_path, carphone, monkeypatch):
    import pipeline.curate.probe.table as pt

    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(carphone, raw / "a.mp4")
    cache = tmp_path / "probe-cache.json"
    first = pt.probe_folder(raw, cache_path=cache)
    monkeypatch.setattr(pt, "probe_file", lambda *a, **k: pytest.fail("an unchanged file was probed again"))
    assert pt.probe_folder(raw, cache_path=cache).equals(first)


def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from pipeline.core.images import open_image_rgb

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g.png")
    rgb = np.asarray(open_image_rgb(tmp_path / "g.png"))
    assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == 255 and 100 < rgb.mean() < 155
