"""train.save_every: loadable snapshot LoRA files named after the run and the step, the final files
named after the run; a snapshot loads into WanPipeline and equals the weights of a run stopped there."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.cli import main as vlp
from pipeline.train.stage import run_from_params
from tests.helpers.train_data import make_dataset

TINY = {"profile": "tiny", "path": None}

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw):
    base = dict(run_name="mystyle", steps=6, rank=4, alpha=8, lr=5e-3, base_storage="fp32", save_dtype="float32",
                held_out_fraction=0.0, eval_every=0, checkpoint_every=0, progress=False, seed=3, save_every=2)
    return {**base, **kw}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshots")
    data = make_dataset(root, [{"clip_id": f"c{i}", "frames": 9} for i in range(3)])
    kw = dict(cache_dir=str(data / "cache"), data_dir=str(data))
    run_from_params(TINY, params(), **kw)
    run_from_params(TINY, params(run_name="short", steps=4, save_every=0), **kw)
    return data


def test_snapshots_and_final_files_are_named_after_the_run(runs):
    out = runs / "lora" / "mystyle"
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [
        "mystyle-step00002.safetensors", "mystyle-step00002_comfy.safetensors",
        "mystyle-step00004.safetensors", "mystyle-step00004_comfy.safetensors"]
    assert (out / "mystyle.safetensors").exists() and (out / "mystyle_comfy.safetensors").exists()
    assert not (runs / "lora" / "short" / "snapshots").exists()  # save_every 0: the final files only
    for step in (2, 4):
        with safe_open(str(out / "snapshots" / f"mystyle-step{step:05d}.safetensors"), "pt") as f:
            meta = f.metadata()
        assert meta["vlp.steps"] == str(step) and meta["ss_steps"] == str(step) and meta["vlp.run_name"] == "mystyle"


def test_a_snapshot_holds_the_weights_of_that_step(runs):
    """Step 4 of a 6-step run (constant schedule) is the LoRA of the same run stopped at 4 steps."""
    snap = load_file(str(runs / "lora" / "mystyle" / "snapshots" / "mystyle-step00004.safetensors"))
    short = load_file(str(runs / "lora" / "short" / "short.safetensors"))
    final = load_file(str(runs / "lora" / "mystyle" / "mystyle.safetensors"))
    assert snap.keys() == short.keys() and all(torch.equal(snap[k], short[k]) for k in snap)
    assert any(not torch.equal(snap[k], final[k]) for k in snap)


def test_a_snapshot_loads_into_the_pipeline_and_changes_its_output(runs):
    from diffusers import WanPipeline

    from tests.train.test_families import family_pipeline, generate

    pipe = family_pipeline("tiny")
    assert isinstance(pipe, WanPipeline)
    before = generate(pipe)
    pipe.load_lora_weights(str(runs / "lora" / "mystyle" / "snapshots"), weight_name="mystyle-step00002.safetensors",
                           adapter_name="snap")
    assert not torch.allclose(before, generate(pipe))


def test_audit_names_snapshots_for_a_takedown(runs, capsys):
    assert vlp(["audit", "--lora-dir", str(runs / "lora"), "--clip", "c1"]) == 0
    out = capsys.readouterr().out
    assert "mystyle-step00002.safetensors" in out and "mystyle.safetensors" in out and "short.safetensors" in out


def test_snapshots_of_a_run_not_continued_are_removed(runs, caplog):
    """Another configuration under the same run name starts over: its old snapshots go, with a warning."""
    kw = dict(cache_dir=str(runs / "cache"), data_dir=str(runs))
    run_from_params(TINY, params(run_name="mystyle", rank=8, steps=2, save_every=1), **kw)
    names = sorted(p.name for p in (runs / "lora" / "mystyle" / "snapshots").iterdir())
    assert names == ["mystyle-step00001.safetensors", "mystyle-step00001_comfy.safetensors"]
    assert sum("a snapshot of a run this one does not continue" in r.getMessage() for r in caplog.records) == 4
