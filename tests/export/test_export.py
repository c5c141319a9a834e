"""vlp export: musubi-tuner and diffusion-pipe layouts, clip files written from their spans, captions beside
them, TOML that parses with their keys, re-exports that write only what changed."""

import json
import os
import tomllib

import numpy as np
import polars as pl
import pytest

from pipeline.cli import main as vlp
from pipeline.core import media, schemas
from pipeline.core.clip_writer import Encoding
from pipeline.export.export import ExportConfig
from tests.helpers.fake_tables import build


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    t = build(root)
    return root, t


def _run(root, out, *extra):
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return vlp(["export", str(out), *extra])
    finally:
        os.chdir(cwd)


def _media(folder):
    return sorted(p for p in folder.iterdir() if p.suffix != ".txt")


def test_musubi_layout_and_toml(project, tmp_path):
    root, t = project
    out = tmp_path / "musubi"
    assert _run(root, out, "--format", "musubi") == 0
    ids = t["ids"]
    videos, images = _media(out / "video"), _media(out / "image")
    # Kept clips with an ok caption only: v1a, v1b (videos) and the photo; v2a's caption failed, v1c was rejected.
    assert [p.name for p in videos] == [f"alice_walk_{ids['v1a'][:12]}.mp4", f"alice_walk_{ids['v1b'][:12]}.mp4"]
    assert [p.name for p in images] == [f"cat_1_{ids['p1'][:12]}.png"]
    assert all(not p.is_symlink() for p in videos + images)
    # each clip file holds its span of the source (re-encoded: close, not equal), the photo is the photo bitwise
    src = media.read_frames(root / "data/raw/people/alice_walk.mp4", range(20, 40))
    got = media.read_frames(videos[1], range(20))
    assert media.frame_count(videos[1]) == 20 and np.abs(got.astype(int) - src).mean() < 6
    assert media.video_info(videos[0]).fps == 25.0
    assert np.array_equal(media.read_image(images[0]), media.read_image(root / "data/raw/photos/cat <1>.png"))
    assert videos[0].with_suffix(".txt").read_text() == "sks woman walks along a <b>street</b> & waves\n"
    assert videos[1].with_suffix(".txt").read_text() == "sks woman turns to the camera\n"
    assert images[0].with_suffix(".txt").read_text() == "sks cat portrait, red square\n"

    cfg = tomllib.loads((out / "dataset.toml").read_text())
    g = cfg["general"]
    assert g["resolution"] == [832, 480] and g["caption_extension"] == ".txt" and g["batch_size"] == 1
    assert g["enable_bucket"] is True and g["bucket_no_upscale"] is False
    vids = [d for d in cfg["datasets"] if "video_directory" in d]
    imgs = [d for d in cfg["datasets"] if "image_directory" in d]
    assert len(vids) == 1 and len(imgs) == 1
    assert vids[0]["video_directory"] == str(out.resolve() / "video")
    assert vids[0]["frame_extraction"] == "full" and vids[0]["max_frames"] == 81
    assert isinstance(vids[0]["source_fps"], float) and vids[0]["source_fps"] == 25.0
    assert imgs[0]["image_directory"] == str(out.resolve() / "image")
    caches = [d["cache_directory"] for d in cfg["datasets"]]
    assert len(set(caches)) == 2  # musubi needs a distinct cache folder per dataset
    record = json.loads((out / "export.json").read_text())
    assert sorted(record["clips"]) == sorted([ids["v1a"], ids["v1b"], ids["p1"]])
    assert record["encoding"] == Encoding().as_key()  # no params.yaml in the project: the defaults

    # A re-export writes nothing that did not change; a changed encoding writes the videos again.
    stamps = {p: p.stat().st_mtime_ns for p in videos + images}
    assert _run(root, out, "--format", "musubi") == 0
    assert {p: p.stat().st_mtime_ns for p in videos + images} == stamps
    (root / "params.yaml").write_text("split:\n  crf: 30\n  preset: ultrafast\n")
    try:
        assert _run(root, out, "--format", "musubi") == 0
    finally:
        (root / "params.yaml").unlink()
    assert json.loads((out / "export.json").read_text())["encoding"]["crf"] == 30
    assert all(p.stat().st_mtime_ns != stamps[p] for p in videos) and images[0].stat().st_mtime_ns == stamps[images[0]]


def test_diffusion_pipe_layout_links_and_reexport(tmp_path):
    root = tmp_path / "proj"
    t = build(root)
    # v1a has a clip file the split stage wrote (split.write_clips): --link links it; v1b has none: it is written
    clip_file = root / "data/clips/v1a.mp4"
    clip_file.parent.mkdir(parents=True)
    clip_file.write_bytes(b"the clip file (linked, never decoded)")
    for name in ("dataset", "clips"):
        df = t[name].with_columns(clip_file=pl.when(pl.col("clip_id") == t["ids"]["v1a"]).then(pl.lit("data/clips/v1a.mp4"))
                                  .otherwise(pl.col("clip_file")))
        schemas.write_table(df, root / "data" / f"{name}.parquet", name)
    out = tmp_path / "dp"
    assert _run(root, out, "--format", "diffusion-pipe", "--link", "--frames", "17,33", "--image-repeats", "3") == 0
    videos = _media(out / "video")
    assert len(videos) == 2 and [p.is_symlink() for p in videos] == [True, False]
    assert videos[0].resolve() == clip_file.resolve()
    assert media.frame_count(videos[1]) == 20
    cfg = tomllib.loads((out / "dataset.toml").read_text())
    assert cfg["resolutions"] == [[832, 480]] and cfg["enable_ar_bucket"] is True
    assert cfg["frame_buckets"] == [1, 17, 33]
    assert isinstance(cfg["min_ar"], float) and isinstance(cfg["num_ar_buckets"], int)
    dirs = {d["path"]: d["num_repeats"] for d in cfg["directory"]}
    assert dirs == {str(out.resolve() / "video"): 1, str(out.resolve() / "image"): 3}

    # Re-export after v1b's row changed (a new content address) to a span its source no longer has: its files go,
    # the others stay (an unchanged key is never made again: the file holds what the key says).
    ds = schemas.read_table(root / "data/dataset.parquet", "dataset")
    v1b = pl.col("clip_id") == t["ids"]["v1b"]
    ds = ds.with_columns(source_frames=pl.when(v1b).then(99).otherwise(pl.col("source_frames")),
                         sha256=pl.when(v1b).then(pl.lit("f" * 64)).otherwise(pl.col("sha256")))
    schemas.write_table(ds, root / "data/dataset.parquet", "dataset")
    assert _run(root, out, "--format", "diffusion-pipe", "--link") == 0
    assert [p.name[:-17] for p in _media(out / "video")] == ["alice_walk"]
    assert not any(p.name.startswith(f"alice_walk_{t['ids']['v1b'][:12]}") for p in (out / "video").iterdir())
    record = json.loads((out / "export.json").read_text())
    assert len(record["missing"]) == 1 and "99 when it was split" in record["missing"][0] and t["ids"]["v1b"] in record["missing"][0]


def test_bad_input_is_a_clear_error(project, tmp_path, capsys):
    root, _ = project
    assert _run(root, tmp_path / "x", "--format", "musubi", "--frames", "16") == 2
    assert "4n+1" in capsys.readouterr().err
    assert _run(root, tmp_path / "x", "--format", "musubi", "--dataset", "nope.parquet") == 2
    assert "nope.parquet" in capsys.readouterr().err
    with pytest.raises(ValueError):
        ExportConfig(format="kohya")


def test_dataset_toml_round_trips():
    from pipeline.export.export import dumps_toml

    doc = {"name": 'a "quoted" \\ path\nwith ü and \t tab', "fps": 30.0, "tiny": 1e-5, "n": 3, "flags": [True, False],
           "res": [[832, 480]], "general": {"resolution": [960, 544], "skip": None, "weird key": 1},
           "datasets": [{"video_directory": "/x/y", "source_fps": 29.97}, {"image_directory": "/z"}]}
    text = dumps_toml(doc, header="two\nlines")
    assert text.startswith("# two\n# lines\n")
    back = tomllib.loads(text)
    expected = {k: v for k, v in doc.items()}
    expected["general"] = {"resolution": [960, 544], "weird key": 1}
    assert back == expected
    assert isinstance(back["fps"], float)
    with pytest.raises(TypeError):
        dumps_toml({"x": object()})
