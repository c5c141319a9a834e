"""Photos as sources: probe and split (issue 8)."""

import shutil

import numpy as np
import polars as pl
from PIL import Image

from pipeline.core.clip import ClipSpan
from pipeline.core.samples import sample_photo
from pipeline.curate.probe.files import probe_file
from pipeline.curate.probe.table import probe_folder
from pipeline.curate.split.split import SplitConfig, split_sources


def _exif_rotated(path, orientation=6):
    """A 200x100 photo stored sideways with an EXIF orientation tag."""
    im = Image.open(sample_photo("astronaut.png")).convert("RGB").resize((200, 100))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format="JPEG", exif=exif.tobytes(), quality=92)
    return path


def test_probe_photo_kinds(tmp_path):
    shutil.copy(sample_photo("chelsea.png"), tmp_path / "cat.png")
    r = probe_file(tmp_path / "cat.png", tmp_path)
    assert (r["status"], r["kind"], r["n_frames"], r["rotation"]) == ("ok", "image", 1, 0)
    assert (r["width"], r["height"]) == (451, 300)
    rot = probe_file(_exif_rotated(tmp_path / "side.jpg"), tmp_path)
    assert rot["status"] == "ok" and rot["rotation"] == 90 and (rot["width"], rot["height"]) == (200, 100)


def test_truncated_jpeg_is_rejected(tmp_path):
    Image.open(sample_photo("coffee.png")).convert("RGB").save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    r = probe_file(tmp_path / "cut.jpg", tmp_path)
    assert r["status"] == "rejected" and "truncated" in r["reason"], r["reason"]


def test_photo_becomes_one_upright_clip_and_png_file(tmp_path, carphone):
    raw = tmp_path / "raw"
    (raw / "photos").mkdir(parents=True)
    _exif_rotated(raw / "photos" / "side.jpg")
    shutil.copy(sample_photo("astronaut.png"), raw / "photos" / "astronaut.png")
    shutil.copy(carphone, raw / "carphone.mp4")
    sources = probe_folder(raw)
    clips = split_sources(sources, raw, tmp_path / "clips", SplitConfig(write_clips=True), jobs=1)
    photos = {r["source_path"]: r for r in clips.filter(pl.col("kind") == "image").to_dicts()}
    assert set(photos) == {"photos/side.jpg", "photos/astronaut.png"}
    side = photos["photos/side.jpg"]
    assert side["status"] == "ok" and side["n_frames"] == 1 and side["path"].endswith("photos/side.jpg")
    assert (side["width"], side["height"]) == (100, 200)
    assert ClipSpan.from_row(side).read().shape == (1, 200, 100, 3)  # what every stage reads: upright
    im = Image.open(side["clip_file"])  # split.write_clips: the upright photo as a PNG
    assert side["clip_file"].endswith(".png") and im.mode == "RGB" and im.size == (100, 200)
    assert np.array_equal(np.asarray(im), ClipSpan.from_row(side).read()[0])
    # the upright pixels are the stored ones turned 90 degrees clockwise
    stored = np.asarray(Image.open(raw / "photos" / "side.jpg").convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(im, dtype=np.int16) - np.rot90(stored, k=-1)).mean() < 3
    assert clips.filter(pl.col("kind") == "video").height == 1
