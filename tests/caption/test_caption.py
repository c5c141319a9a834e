"""Caption stage with the tiny Qwen2.5-VL on real clips and a real photo: provenance, failures,
resume after an interrupted run, human edits."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.caption.backends import hf
from pipeline.caption.edits import EditsError, read_edits
from pipeline.caption.prompts import IMAGE_PROMPT, VIDEO_PROMPT, prompt_sha256
from pipeline.caption.stage import TIMINGS, run_caption
from pipeline.caption.store import CaptionStore
from pipeline.cli import main as vlp
from pipeline.core import schemas
from pipeline.models.tiny.vlm import tiny_vlm_dir
from tests.helpers.caption_helpers import cut_sample_clips, dataset, dataset_row, tiny_params


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return cut_sample_clips(tmp_path_factory.mktemp("caption-clips"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    tiny_vlm_dir(cache_dir=root)  # build once for the module
    return root


@pytest.fixture
def calls(monkeypatch):
    """Every batch the transformers backend captions: a list of [(clip_id, kind, prompt), ...]."""
    seen: list[list[tuple]] = []
    real = hf.TransformersCaptioner.generate

    def spy(self, items):
        seen.append([(it.clip_id, it.media.kind, it.prompt) for it in items])
        return real(self, items)

    monkeypatch.setattr(hf.TransformersCaptioner, "generate", spy)
    return seen


def run(tmp_path, rows, params, edits=None):
    out = tmp_path / "out"
    return run_caption(dataset(rows), params, out / "captions.parquet", out / "captions.parts",
                       out / "metrics" / "caption.json", edits or tmp_path / "edits.csv")


def test_tiny_model_captions_real_clips_and_photo(tmp_path, clips, tiny_dir, calls):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    rows = clips + [dataset_row("broken", "video", broken, 25.0, 30, 64, 64)]
    table, metrics = run(tmp_path, rows, tiny_params(tiny_dir, trigger="sks"))

    schemas.validate(table, "captions")
    assert schemas.read_table(tmp_path / "out" / "captions.parquet", "captions").equals(table)
    by_id = {r["clip_id"]: r for r in table.iter_rows(named=True)}
    assert list(by_id) == [r["clip_id"] for r in rows]
    for cid in ("bikes0", "bikes1", "carphone0", "astronaut"):
        r = by_id[cid]
        assert r["status"] == "ok" and r["source"] == "vlm", r
        assert r["caption"].startswith("sks, ") and len(r["caption"]) > len("sks, ")
        assert r["model"].startswith("tiny@") and r["new_tokens"] >= 16
    # Videos and the photo carry their own prompt and sampling params.
    assert by_id["bikes0"]["prompt_sha256"] == prompt_sha256(VIDEO_PROMPT)
    assert by_id["astronaut"]["prompt_sha256"] == prompt_sha256(IMAGE_PROMPT)
    assert json.loads(by_id["bikes0"]["sampling"])["fps"] == 4.0
    assert json.loads(by_id["astronaut"]["sampling"]) == {
        "image_max_pixels": 112 * 112, "max_new_tokens": 20, "min_new_tokens": 16, "do_sample": False}
    # The unreadable clip is a failed row naming the file; it never stops the batch.
    assert by_id["broken"]["status"] == "caption_failed" and by_id["broken"]["caption"] == ""
    assert str(broken) in by_id["broken"]["reason"]
    # Photos and videos never share a generate call; the photo gets the image prompt.
    kinds = [{k for _, k, _ in batch} for batch in calls]
    assert all(len(k) == 1 for k in kinds) and {"image"} in kinds
    assert all(p == (IMAGE_PROMPT if k == "image" else VIDEO_PROMPT) for batch in calls for _, k, p in batch)
    saved = json.loads((tmp_path / "out" / "metrics" / "caption.json").read_text())
    assert saved == {k: v for k, v in metrics.items() if k not in TIMINGS}  # throughput: core.timings
    assert (metrics["captioned"], metrics["failed"], metrics["reused"], metrics["edited"]) == (4, 1, 0, 0)
    assert metrics["clips_per_s"] > 0 and metrics["tokens_per_s"] > 0 and metrics["new_tokens"] >= 64

    # A re-run reuses every caption and retries only the failed clip; a new trigger word
    # re-cleans the stored answers without asking the model again.
    calls.clear()
    again, metrics2 = run(tmp_path, rows, tiny_params(tiny_dir, trigger="ohwx"))
    assert calls == []  # the broken clip is retried (and fails again at decoding), nothing else is redone
    assert (metrics2["reused"], metrics2["captioned"], metrics2["failed"], metrics2["vlm_clips"]) == (4, 0, 1, 1)
    for old, new in zip(table.iter_rows(named=True), again.iter_rows(named=True)):
        if old["status"] == "ok":
            assert new["caption"] == "ohwx, " + old["caption"][len("sks, "):]
            assert new["created_at"] == old["created_at"] and new["raw"] == old["raw"]

    # A changed video prompt is a different caption: every video is captioned again, the photo is not.
    calls.clear()
    _, metrics3 = run(tmp_path, rows, tiny_params(tiny_dir, prompt="Say what happens."))
    assert metrics3["reused"] == 1
    assert sorted(c for b in calls for c, _, _ in b) == ["bikes0", "bikes1", "carphone0"]


def test_tiny_model_is_deterministic(tmp_path, clips, tiny_dir):
    rows = clips[:1]
    a, _ = run(tmp_path / "a", rows, tiny_params(tiny_dir))
    b, _ = run(tmp_path / "b", rows, tiny_params(tmp_path / "fresh-build"))  # built again from scratch
    assert a["model"].to_list() == b["model"].to_list()
    assert a["raw"].to_list() == b["raw"].to_list()


def test_interrupted_run_keeps_finished_captions_and_resumes(tmp_path, clips, tiny_dir, monkeypatch):
    params = tiny_params(tiny_dir, batch_size=1, chunk_size=50)  # chunk larger than the run: the flush on exit matters
    captioned: list[str] = []
    real = hf.TransformersCaptioner.generate

    def dies_on_third(self, items):
        if len(captioned) == 2:
            raise KeyboardInterrupt  # Ctrl-C (the stage turns SIGTERM into this too)
        captioned.extend(it.clip_id for it in items)
        return real(self, items)

    monkeypatch.setattr(hf.TransformersCaptioner, "generate", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, clips, params)
    parts = tmp_path / "out" / "captions.parts"
    kept = CaptionStore(parts).load()
    assert sorted(r["clip_id"] for r in kept.rows.values()) == sorted(captioned) and len(captioned) == 2
    assert not (tmp_path / "out" / "captions.parquet").exists()

    second: list[str] = []

    def counting(self, items):
        second.extend(it.clip_id for it in items)
        return real(self, items)

    monkeypatch.setattr(hf.TransformersCaptioner, "generate", counting)
    table, metrics = run(tmp_path, clips, params)
    assert sorted(second) == sorted({r["clip_id"] for r in clips} - set(captioned))
    assert (metrics["reused"], metrics["captioned"]) == (2, 2)
    assert table["status"].to_list() == ["ok"] * 4
    assert len(list(parts.glob("*.parquet"))) == 1  # folded into one part at the end
    after = CaptionStore(parts).load().rows
    assert len(after) == 4 and all(after[k] == row for k, row in kept.rows.items())  # the first run's rows, untouched


def test_edit_wins_and_survives_reruns(tmp_path, clips, tiny_dir, calls, capsys):
    edits = tmp_path / "captions_edits.csv"
    edits.write_text("clip_id,caption\n")
    rows = clips[:2]
    params = tiny_params(tiny_dir, trigger="sks")
    data = tmp_path / "data"  # the kept clips the edit command checks ids against
    data.mkdir()
    dataset(clips).write_parquet(data / "dataset.parquet")
    known = ["--edits", str(edits), "--data", str(data)]
    assert vlp(["caption", "edit", "bikes1", "  A cyclist rides  through a park. ", *known]) == 0
    assert vlp(["caption", "edit", "astronaut", "An astronaut in a white suit.", *known]) == 0
    assert edits.read_text().splitlines() == [
        "clip_id,caption", "astronaut,An astronaut in a white suit.", "bikes1,A cyclist rides through a park."]

    for _ in range(2):  # the first run and a re-run
        calls.clear()
        table, metrics = run(tmp_path, rows, params, edits)
        by_id = {r["clip_id"]: r for r in table.iter_rows(named=True)}
        assert by_id["bikes1"]["source"] == "edit" and by_id["bikes1"]["status"] == "ok"
        assert by_id["bikes1"]["caption"] == "sks, A cyclist rides through a park."
        assert by_id["bikes1"]["model"] == "human"
        assert all(cid != "bikes1" for b in calls for cid, _, _ in b)  # never sent to the VLM
        assert metrics["edited"] == 1
    assert metrics["reused"] == 1

    # Replacing the edit changes the caption; removing it hands the clip back to the VLM.
    assert vlp(["caption", "edit", "bikes1", "Two cyclists on a trail.", *known]) == 0
    table, _ = run(tmp_path, rows, params, edits)
    assert table.filter(pl.col("clip_id") == "bikes1")["caption"].item() == "sks, Two cyclists on a trail."
    assert vlp(["caption", "edit", "bikes1", "", *known]) == 0
    calls.clear()
    table, _ = run(tmp_path, rows, params, edits)
    assert table.filter(pl.col("clip_id") == "bikes1")["source"].item() == "vlm"
    assert [[c for c, _, _ in b] for b in calls] == [["bikes1"]]
    assert read_edits(edits) == {"astronaut": "An astronaut in a white suit."}


def test_malformed_edits_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "captions_edits.csv"
    bad.write_text("id,text\nx,y\n")
    with pytest.raises(EditsError, match="header must be 'clip_id,caption'"):
        read_edits(bad)
    bad.write_text("clip_id,caption\nx,y,z\n")
    with pytest.raises(EditsError, match=r":2: expected 2 fields"):
        read_edits(bad)


def test_batched_generation_matches_one_by_one(clips, tiny_dir):
    """Left padding and per-clip video grids: a batch answers exactly what each clip alone gets,
    and the answers depend on the frames (the media reaches the model)."""
    from pipeline.caption.backends.base import CaptionItem, GenerationParams
    from pipeline.caption.media import FrameSampling, load_clip

    sampling = FrameSampling(fps=4.0, max_frames=4, max_pixels=56 * 112, image_max_pixels=112 * 112)
    captioner = hf.TransformersCaptioner(str(tiny_vlm_dir(cache_dir=tiny_dir)),
                                         GenerationParams(max_new_tokens=12, min_new_tokens=12), sampling, device="cpu")
    videos = [c for c in clips if c["kind"] == "video"]
    items = [CaptionItem(c["clip_id"], load_clip(c, sampling), prompt)
             for c, prompt in zip(videos, ["Describe.", "Describe.", "Describe the clip in one sentence."])]
    assert len({it.media.frames.shape for it in items}) > 1  # different frame sizes in one batch
    batched = captioner.generate(items)
    alone = [captioner.generate([it])[0] for it in items]
    assert [o.text for o in batched] == [o.text for o in alone]
    assert [o.new_tokens for o in batched] == [12, 12, 12]
    assert batched[0].text != batched[1].text  # same prompt, different clip: different answer


def test_local_model_folder_is_fingerprinted_once(tmp_path, tiny_dir, monkeypatch):
    """A local folder (here the tiny model's) is labelled path@sha of its files; the hashes are
    remembered by path, size and mtime, so the next run hashes nothing; a changed file is re-hashed."""
    import pipeline.core.fingerprint as fp
    from pipeline.caption.config import make_backend, run_settings

    monkeypatch.setenv("VLP_CACHE_DIR", str(tmp_path / "cache"))
    hashed: list[str] = []
    real = fp.sha256_file
    monkeypatch.setattr(fp, "sha256_file", lambda f: hashed.append(str(f)) or real(f))
    folder = tmp_path / "my-vlm"
    import shutil

    shutil.copytree(tiny_vlm_dir(cache_dir=tiny_dir), folder)
    p = {"model": str(folder)}
    label, _ = make_backend(p, run_settings(p))
    assert label.startswith(f"{folder}@") and len(label.split("@")[1]) == 16
    assert any(h.endswith("model.safetensors") for h in hashed) and any(h.endswith("chat_template.jinja") for h in hashed)
    assert (tmp_path / "cache" / "caption-file-sha256.json").exists()
    hashed.clear()
    assert make_backend(p, run_settings(p))[0] == label and hashed == []
    cfg = folder / "generation_config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"repetition_penalty": 1.05,', 1))
    label2, _ = make_backend(p, run_settings(p))
    assert hashed == [str(cfg.resolve())] and label2 != label


def test_vlp_caption_runs_the_stage_on_a_folder(tmp_path, clips, tiny_dir, capsys):
    """``vlp caption --data DIR`` runs the caption stage's runner on DIR/dataset.parquet; -S overrides a param."""
    import yaml

    from pipeline.cli import main as vlp

    out = tmp_path / "out"
    out.mkdir()
    dataset(clips[:1]).write_parquet(out / "dataset.parquet")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"caption": tiny_params(tiny_dir)}))
    assert vlp(["caption", "--data", str(out), "--params", str(params), "-S", "caption.batch_size=1"]) == 0
    result = schemas.read_table(out / "captions.parquet", "captions")
    assert result["clip_id"].to_list() == ["bikes0"] and result["status"].to_list() == ["ok"]
    assert json.loads((out / "metrics" / "caption.json").read_text())["batch_size"] == 1
    assert "bikes0" in capsys.readouterr().out


def test_failing_batch_is_retried_clip_by_clip(tmp_path, clips, tiny_dir, monkeypatch):
    real = hf.TransformersCaptioner.generate
    sizes: list[int] = []

    def oom_on_batches(self, items):
        sizes.append(len(items))
        if len(items) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if items[0].clip_id == "bikes1":
            raise ValueError("bad frames\nsecond line")
        return real(self, items)

    monkeypatch.setattr(hf.TransformersCaptioner, "generate", oom_on_batches)
    table, metrics = run(tmp_path, clips[:3], tiny_params(tiny_dir, batch_size=3))
    assert sizes == [3, 1, 1, 1]
    by_id = {r["clip_id"]: r for r in table.iter_rows(named=True)}
    assert by_id["bikes0"]["status"] == by_id["carphone0"]["status"] == "ok"
    assert by_id["bikes1"]["status"] == "caption_failed"
    assert by_id["bikes1"]["reason"] == "backend error: ValueError: bad frames"
    assert (metrics["captioned"], metrics["failed"]) == (2, 1)
