"""Data-parallel training under torchrun (two CPU processes, gloo): the same global batch gives the LoRA
a single process trains, a run resumes on another number of processes, and a grad_accum the
processes cannot share is a one-line error. Launched as the README says: `torchrun ... -m pipeline.cli train`."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers.train_data import make_dataset

TRAIN = dict(steps=4, rank=4, alpha=8, lr=5e-3, batch_size=1, grad_accum=2, base_storage="fp32", save_dtype="float32",
             held_out_fraction=0.0, eval_every=0, checkpoint_every=1, progress=False, seed=3, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return make_dataset(root, [{"clip_id": f"c{i}", "frames": 9, "caption": f"clip number {i}"} for i in range(5)])


def launch(data, processes: int, **train) -> subprocess.CompletedProcess:
    params = data.parent / f"params-{processes}-{train.get('run_name', 'run')}.yaml"
    params.write_text(yaml.safe_dump({"model": {"profile": "tiny", "path": None}, "train": {**TRAIN, **train}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "pipeline.cli", "train", "--data", str(data), "--params", str(params)]
    if processes > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
                *argv[2:]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def lora(data, run):
    return load_file(str(data / "lora" / run / f"{run}.safetensors"))


def assert_same_lora(a, b):
    """float32 on CPU: the gradient sum over processes differs from one process's only in the order of
    additions (two terms here: the same sum), so the LoRAs agree to float32 rounding."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_two_processes_train_the_lora_of_one_with_the_same_global_batch(data):
    one = launch(data, 1, run_name="one")
    two = launch(data, 2, run_name="two")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_lora(lora(data, "one"), lora(data, "two"))
    assert "data-parallel training on 2 processes (gloo)" in two.stderr
    metrics = json.loads((data / "lora" / "two" / "metrics.json").read_text())
    losses = [r.split(",") for r in (data / "lora" / "two" / "loss.csv").read_text().split()[1:]]
    ref = [r.split(",") for r in (data / "lora" / "one" / "loss.csv").read_text().split()[1:]]
    assert [int(s) for s, _ in losses] == [1, 2, 3, 4] and metrics["steps"] == 4
    for (_, a), (_, b) in zip(losses, ref):  # the step loss is the mean over both processes' batches
        assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_a_two_process_run_resumes_on_one(data):
    first = launch(data, 2, run_name="resumed", steps=2)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(data, 1, run_name="resumed", steps=4)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((data / "lora" / "resumed" / "metrics.json").read_text())["resumed_from_step"] == 2
    straight = data / "lora" / "one" / "one.safetensors"  # 4 steps in one process, the same seeds (the first test)
    if not straight.exists():
        assert launch(data, 1, run_name="one").returncode == 0
    assert_same_lora(lora(data, "resumed"), lora(data, "one"))


def test_a_grad_accum_the_processes_cannot_share_is_a_one_line_error(data):
    out = launch(data, 2, run_name="odd", grad_accum=3)
    assert out.returncode != 0
    assert "train.grad_accum (3) must be a multiple of the number of processes (2)" in out.stderr
    assert not (data / "lora" / "odd" / "odd.safetensors").exists()
