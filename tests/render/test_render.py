"""Sample videos while training (train.samples) and the render stage: latents at the right steps
through WanPipeline with the LoRA, never touching the training RNG; the render stage decodes them
to playable mp4 files the report shows per run and step."""

import json
import subprocess

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pipeline.cache.store import CacheStore
from pipeline.core import schemas
from pipeline.core.layout import Layout
from pipeline.render.stage import run as render
from pipeline.report.report import build_report
from pipeline.train.stage import run_from_params
from tests.helpers.train_data import TEXT_DIM, make_dataset

TINY = {"profile": "tiny", "path": None}
PROMPTS = ["a red bike at dusk", "waves"]

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw):
    base = dict(run_name="run", steps=4, rank=4, alpha=8, lr=5e-3, base_storage="fp32", save_dtype="float32",
                held_out_fraction=0.0, eval_every=0, checkpoint_every=0, progress=False, seed=3,
                samples=PROMPTS, sample_every=2, sample_frames=5, sample_width=32, sample_height=48, sample_steps=2)
    return {**base, **kw}


def write_prompts(data, prompts=PROMPTS):
    """The encode stage's prompts.parquet and cache entries (random embeddings of the tiny text width)."""
    store, rows = CacheStore(data / "cache"), []
    for i, (role, text) in enumerate([("empty", "")] + [("sample", p) for p in prompts]):
        key = f"{i:02d}" + "ab" * 31
        emb = torch.randn(3 + i, TEXT_DIM, generator=torch.Generator().manual_seed(i))
        store.put(key, {"prompt_embeds": emb})
        rows.append({"prompt": text, "role": role, "text_key": key, "text_shape": list(emb.shape), "text_encoder": "tiny"})
    schemas.write_table(schemas.frame("prompts", rows), data / "prompts.parquet", "prompts")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    data = make_dataset(root, [{"clip_id": f"c{i}", "frames": 9} for i in range(3)])
    write_prompts(data)
    kw = dict(cache_dir=str(data / "cache"), data_dir=str(data))
    run_from_params(TINY, params(), **kw)
    run_from_params(TINY, params(run_name="plain", samples=[], sample_every=0), **kw)
    return data


def test_sample_latents_at_the_right_steps_with_their_prompt(trained):
    folder = trained / "lora" / "run" / "samples"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00002", "step-00004"]
    for step in ("step-00002", "step-00004"):
        assert sorted(p.name for p in (folder / step).iterdir()) == ["0.safetensors", "1.safetensors"]
        with safe_open(str(folder / step / "1.safetensors"), "pt") as f:
            meta, latents = f.metadata(), f.get_tensor("latents")
        assert meta["prompt"] == "waves" and meta["step"] == step[-1] and meta["family"] == "wan2.1-t2v"
        assert list(latents.shape) == [16, 2, 6, 4] and torch.isfinite(latents).all()  # 5 frames, 48x32, 8x VAE
    a = load_file(str(folder / "step-00002" / "0.safetensors"))["latents"]
    b = load_file(str(folder / "step-00004" / "0.safetensors"))["latents"]
    assert not torch.equal(a, b)  # the LoRA moved between the steps (same seed, same noise)


def test_sampling_never_changes_what_is_trained(trained):
    a = load_file(str(trained / "lora" / "run" / "run.safetensors"))
    b = load_file(str(trained / "lora" / "plain" / "plain.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_render_writes_playable_videos_once_and_the_report_shows_them(trained):
    layout = Layout.of(trained)
    metrics = render({"model": TINY}, layout)
    assert (metrics["samples"], metrics["rendered"], metrics["failed"]) == (4, 4, [])
    video = trained / "samples" / "run" / "step-00004" / "1.mp4"
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                            "stream=nb_read_frames,width,height,codec_name", "-of", "json", str(video)],
                           capture_output=True, text=True, check=True)
    stream = json.loads(probe.stdout)["streams"][0]
    assert (int(stream["nb_read_frames"]), stream["width"], stream["height"], stream["codec_name"]) == (5, 32, 48, "h264")
    again = render({"model": TINY}, layout)
    assert (again["rendered"], again["reused"]) == (0, 4)
    index = build_report(trained, trained / "report", trained / "lora", {})
    html = index.read_text()
    assert html.count('<video src="../samples/run/step-') == 4 and ">waves</th>" in html


def test_a_missing_prompt_embedding_is_a_one_line_error(tmp_path):
    data = make_dataset(tmp_path, [{"clip_id": "c0", "frames": 9}])
    write_prompts(data, prompts=["waves"])
    with pytest.raises(ValueError, match=r"no cached embedding for prompt\(s\) \['a red bike at dusk'\].*re-run the encode stage"):
        run_from_params(TINY, params(), cache_dir=str(data / "cache"), data_dir=str(data))


def test_image_to_video_samples_without_an_image_are_a_one_line_error(tmp_path):
    """(Samples of every family: tests/render/test_family_samples.py.)"""
    from pipeline.models.profiles import get_profile

    profile = get_profile("tiny-i2v")
    data = make_dataset(tmp_path, [{"clip_id": "c0", "frames": 9}], profile=profile)
    write_prompts(data)
    with pytest.raises(ValueError, match=r"train.samples\[0\]: tiny-i2v makes videos from an image"):
        run_from_params({"profile": "tiny-i2v", "path": None}, params(steps=2), cache_dir=str(data / "cache"),
                        data_dir=str(data))


@pytest.mark.parametrize(("kw", "message"), [
    ({"sample_frames": 6}, r"4n\+1"), ({"sample_width": 40}, "multiples of 16"), ({"samples": [{"text": "x"}]}, "samples\\[0\\]"),
    ({"sample_every": -1}, "sample_every"),
])
def test_bad_sample_params_are_one_line_errors(kw, message):
    from pipeline.core.config import ParamsError
    from pipeline.train.config import TrainConfig

    with pytest.raises(ParamsError, match=message):
        TrainConfig.from_params(params(**kw)).validate()


def test_samples_are_the_same_with_blocks_swapped_and_activations_offloaded(tmp_path):
    """Sampling runs the transformer as the memory plan left it (forward hooks bring swapped weights)."""
    from pipeline.models.profiles import get_profile
    from pipeline.train.config import TrainConfig
    from pipeline.train.estimate import MemoryPlan
    from pipeline.train.memory import apply_memory_plan
    from pipeline.train.sampling import SampleMaker
    from tests.train.test_train_memory import RecordingMover, _model

    data = tmp_path / "data"
    write_prompts(data)
    prompts = schemas.read_table(data / "prompts.parquet", "prompts")
    cfg = TrainConfig.from_params(params())
    got = []
    for plan in (MemoryPlan(), MemoryPlan(blocks_to_swap=3, offload_activations=True, ffn_chunks=2)):
        model, _ = _model()
        apply_memory_plan(model, plan, torch.device("cpu"), True, RecordingMover())
        maker = SampleMaker(cfg, get_profile("tiny"), prompts, CacheStore(data / "cache"), tmp_path / str(plan.blocks_to_swap),
                            torch.device("cpu"), torch.float32)
        got.append([load_file(str(p))["latents"] for p in maker.run(model, 2)])
        assert model.training  # back to training mode
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
