"""vlp export: musubi-tuner and diffusion-pipe layouts, captions beside clips, TOML that parses with their keys."""

import json
import os
import tomllib

import pytest

from pipeline.cli import main as vlp
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
    assert (root / "data/clips/v1a.mp4").read_bytes() == videos[0].read_bytes()
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


def test_diffusion_pipe_layout_links_and_reexport(project, tmp_path):
    root, t = project
    out = tmp_path / "dp"
    assert _run(root, out, "--format", "diffusion-pipe", "--link", "--frames", "17,33", "--image-repeats", "3") == 0
    videos = _media(out / "video")
    assert len(videos) == 2 and all(p.is_symlink() for p in videos)
    assert videos[0].resolve() == (root / "data/clips/v1a.mp4").resolve()
    cfg = tomllib.loads((out / "dataset.toml").read_text())
    assert cfg["resolutions"] == [[832, 480]] and cfg["enable_ar_bucket"] is True
    assert cfg["frame_buckets"] == [1, 17, 33]
    assert isinstance(cfg["min_ar"], float) and isinstance(cfg["num_ar_buckets"], int)
    dirs = {d["path"]: d["num_repeats"] for d in cfg["directory"]}
    assert dirs == {str(out.resolve() / "video"): 1, str(out.resolve() / "image"): 3}

    # Re-export after a clip file disappears: its files go, the others stay.
    gone = root / "data/clips/v1b.mp4"
    saved = gone.read_bytes()
    gone.unlink()
    try:
        assert _run(root, out, "--format", "diffusion-pipe", "--link") == 0
    finally:
        gone.write_bytes(saved)
    assert [p.name[:-17] for p in _media(out / "video")] == ["alice_walk"]
    assert not any(p.name.startswith(f"alice_walk_{t['ids']['v1b'][:12]}") for p in (out / "video").iterdir())


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
