"""train.log_with: tensorboard writes event files with loss, eval loss, lr, s/step and peak memory
at the run's steps; none writes nothing."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.train.stage import run_from_params
from tests.helpers.train_data import make_dataset

TINY = {"profile": "tiny", "path": None}

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def params(**kw):
    base = dict(run_name="run", steps=4, rank=4, alpha=8, lr=5e-3, base_storage="fp32", save_dtype="float32",
                held_out_clips=["c3"], eval_every=2, checkpoint_every=0, progress=False, seed=3)
    return {**base, **kw}


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_follow_the_run(tmp_path):
    data = make_dataset(tmp_path, [{"clip_id": f"c{i}", "frames": 9} for i in range(4)])
    run = dict(cache_dir=str(data / "cache"), data_dir=str(data))
    metrics = run_from_params(TINY, params(log_with="tensorboard"), **run)
    got = scalars(data / "lora/run/tensorboard")
    assert set(got) == {"train/loss", "train/lr", "train/step_s", "train/peak_memory_gib", "train/eval_loss"}
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in got["train/eval_loss"]] == [0, 2, 4]
    assert got["train/eval_loss"][-1][1] == pytest.approx(metrics["eval_loss_final"], rel=1e-5)
    assert all(v == pytest.approx(5e-3) for _, v in got["train/lr"])
    assert all(v > 0 for _, v in got["train/step_s"] + got["train/peak_memory_gib"])
    # none (the default) writes nothing; log_with is not part of what a checkpoint must match
    run_from_params(TINY, params(run_name="quiet"), **run)
    assert not (data / "lora/quiet/tensorboard").exists()


def test_two_experts_write_one_folder_each_on_one_step_axis(tmp_path):
    from pipeline.models.profiles import get_profile

    profile = get_profile("tiny-t2v-a14b")
    data = make_dataset(tmp_path, [{"clip_id": f"c{i}", "frames": 9} for i in range(3)], profile=profile)
    run_from_params({"profile": "tiny-t2v-a14b", "path": None}, params(steps=2, held_out_clips=[], eval_every=0,
                    log_with="tensorboard"), cache_dir=str(data / "cache"), data_dir=str(data))
    high, low = scalars(data / "lora/run/tensorboard/high"), scalars(data / "lora/run/tensorboard/low")
    assert [s for s, _ in high["train/loss"]] == [1, 2] and [s for s, _ in low["train/loss"]] == [3, 4]
