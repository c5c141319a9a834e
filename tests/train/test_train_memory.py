"""Block swap, activation offload and FFN chunks on the CPU, through the device-mover interface.

A recording mover parks every swapped-out weight as an empty tensor, so a block that ran
without its weights resident would fail; hooks check residency at every forward, recompute
and backward, and the LoRA after 3 steps is compared with a run without any of it.
"""

import pytest
import torch

from pipeline.models.tiny.transformer import build_transformer
from pipeline.models.transformer import transformer_config
from pipeline.train.conditioning import TrainInputs
from pipeline.train.config import TrainConfig
from pipeline.train.estimate import SWAP_SLOTS, MemoryPlan
from pipeline.train.memory import apply_memory_plan
from pipeline.train.movers import HostMover
from pipeline.train.setup import setup_lora_training
from pipeline.train.step import micro_step, optimizer_step

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LAYERS = 5


class RecordingMover(HostMover):
    """Synchronous CPU copies; a parked weight is an empty tensor (any use of it fails); every copy is logged."""

    def __init__(self):
        super().__init__("cpu")
        self.log = []

    def upload(self, dst, src, after=None):
        self.log.append(("up", src.numel()))
        return super().upload(dst, src, after)

    def upload_new(self, src, after=None):
        self.log.append(("up_new", src.numel()))
        return super().upload_new(src, after)

    def download(self, dst, src, after=None):
        self.log.append(("down", src.numel()))
        return super().download(dst, src, after)

    def park(self, host_view):
        return torch.empty(0, dtype=host_view.dtype)


def _model(storage="fp32", dropout=0.0):
    cfg = TrainConfig(rank=4, alpha=8, lr=1e-2, seed=5, dropout=dropout)
    config = {**transformer_config("tiny", text_dim=32), "num_layers": LAYERS}
    model = build_transformer(config, seed=11)
    model.requires_grad_(False)
    setup_lora_training(model, cfg, storage, torch.float32)
    return model, cfg


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 16, 3, 8, 12, generator=g)
    text = torch.randn(2, 10, 32, generator=g)
    return TrainInputs(latents, text)


def _resident(block) -> bool:
    return all(p.numel() > 0 for p in block.parameters())


def _train(plan: MemoryPlan, steps=3, storage="fp32", dropout=0.0, watch=None):
    model, cfg = _model(storage, dropout)
    mover = RecordingMover()
    runtime = apply_memory_plan(model, plan, torch.device("cpu"), True, mover)
    if watch is not None:
        watch(model, runtime)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sampler = cfg.sampler()
    torch.manual_seed(9)  # LoRA dropout draws from the global generator, as in the train stage
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        micro_step(model, _inputs(step), sampler, g, torch.float32)
        optimizer_step(params, opt, sched, 1.0)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return lora, runtime, mover, model


@pytest.fixture(scope="module")
def reference():
    return _train(MemoryPlan())[0]


def test_swap_and_offload_give_a_bitwise_equal_lora(reference):
    for plan in (MemoryPlan(blocks_to_swap=3), MemoryPlan(offload_activations=True),
                 MemoryPlan(blocks_to_swap=LAYERS, offload_activations=True)):
        lora, runtime, mover, _ = _train(plan)
        assert lora.keys() == reference.keys()
        assert all(torch.equal(lora[k], reference[k]) for k in lora), plan
        assert any(op == "up" for op, _ in mover.log) == (plan.blocks_to_swap > 0)
        assert any(op == "down" for op, _ in mover.log) == plan.offload_activations


def test_lora_dropout_is_replayed_in_the_recompute():
    """With dropout the recompute must draw the same masks as the forward (RNG state restored)."""
    plain = _train(MemoryPlan(), dropout=0.2)[0]
    swapped = _train(MemoryPlan(blocks_to_swap=2, offload_activations=True), dropout=0.2)[0]
    assert all(torch.equal(plain[k], swapped[k]) for k in plain)


def test_ffn_chunks_give_the_same_lora_up_to_float_rounding(reference):
    """Chunks sum the FFN's LoRA gradients slice by slice: float32 rounding differs, the result does not."""
    for plan in (MemoryPlan(ffn_chunks=3), MemoryPlan(blocks_to_swap=2, offload_activations=True, ffn_chunks=2)):
        lora = _train(plan)[0]
        for k in lora:
            torch.testing.assert_close(lora[k], reference[k], rtol=1e-4, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(_train(MemoryPlan(ffn_chunks=3))[0].values(), reference.values()))


def test_every_block_is_resident_whenever_it_runs_and_never_more_than_planned():
    events = []

    def watch(model, runtime):
        swapped = set(runtime.swap.info)

        def check(i, moment):
            block = model.blocks[i]
            on_device = [j for j in swapped if _resident(model.blocks[j])]
            events.append((moment, i))
            assert _resident(block), f"block {i} ran its {moment} without its weights"
            assert len(on_device) <= SWAP_SLOTS, f"{len(on_device)} swapped blocks on the device at once"

        for i, block in enumerate(model.blocks):
            block.register_forward_pre_hook(lambda m, a, i=i: check(i, "forward" if not torch.is_grad_enabled() else "recompute"))
            block.register_full_backward_pre_hook(lambda m, g, i=i: check(i, "backward"))

    _, runtime, mover, model = _train(MemoryPlan(blocks_to_swap=3, offload_activations=True), steps=2, watch=watch)
    # forward (no grad inside the checkpoint), recompute and backward of every block, every step
    for moment in ("forward", "recompute", "backward"):
        assert sorted(i for m, i in events if m == moment) == sorted(list(range(LAYERS)) * 2), moment
    # backward order: last block first
    assert [i for m, i in events if m == "backward"][:LAYERS] == list(reversed(range(LAYERS)))
    assert runtime.swap.stats.max_resident <= SWAP_SLOTS
    assert runtime.activations.max_on_device <= 2
    # the parked blocks really are unusable: a swapped block is off the device after the step
    assert not _resident(model.blocks[-1])
    with pytest.raises((RuntimeError, NotImplementedError)):
        model.blocks[-1].ffn.net[2].base_layer(torch.randn(1, 64))
    # two steps: each swapped block uploaded at most twice a step (forward, backward), some found in their slot
    s = runtime.swap.stats
    assert s.uploads <= 2 * 2 * 3 and s.hits > 0
    assert runtime.activations.bytes_down == runtime.activations.bytes_up > 0


def test_fp8_weights_travel_as_fp8():
    _, runtime, mover, model = _train(MemoryPlan(blocks_to_swap=2), steps=1, storage="fp8")
    block = runtime.swap.info[LAYERS - 1]
    linear = {id(m.weight) for n, m in model.blocks[-1].named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n}
    views = dict(zip(map(id, block.params), block.host_views))
    assert linear and all(views[i].dtype == torch.float8_e4m3fn for i in linear)
    # what crosses to the device is the packed block: its bytes, the Linear weights at one byte each
    assert ("up", block.nbytes) in mover.log
    assert block.nbytes < 2 * sum(views[i].numel() for i in linear) + 512 * len(block.params)


def test_lora_and_optimizer_state_stay_on_the_device():
    _, runtime, _, model = _train(MemoryPlan(blocks_to_swap=LAYERS), steps=1)
    parked = {id(p) for b in runtime.swap.info.values() for p in b.params}
    assert all(id(p) not in parked for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.device.type == "cpu" for n, p in model.named_parameters() if "lora_" in n)


def test_swap_and_offload_need_gradient_checkpointing():
    model, _ = _model()
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        apply_memory_plan(model, MemoryPlan(blocks_to_swap=1), torch.device("cpu"), False)
    with pytest.raises(ValueError, match="between 0 and the model's 5 blocks"):
        apply_memory_plan(model, MemoryPlan(blocks_to_swap=9), torch.device("cpu"), True)


def test_evaluation_without_grad_streams_the_blocks_too():
    """Eval loss and sampling run the blocks without checkpointing: the forward hooks bring the weights."""
    model, _ = _model()
    want = None
    with torch.no_grad():
        x = _inputs()
        kwargs = dict(hidden_states=x.latents, timestep=torch.tensor([500.0, 500.0]), encoder_hidden_states=x.text,
                      return_dict=False)
        want = model(**kwargs)[0]
    model2, _ = _model()
    apply_memory_plan(model2, MemoryPlan(blocks_to_swap=4, ffn_chunks=2), torch.device("cpu"), True, RecordingMover())
    with torch.no_grad():
        got = model2(**kwargs)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_time_embedding_runs_in_float32_under_bf16_autocast():
    """As diffusers at inference (and the original Wan code): the float32 time embedder is not autocast."""
    from pipeline.train.step import flow_matching_loss

    model, _ = _model()
    torch.nn.Module.to(model, torch.bfloat16)
    for name, module in model.named_modules():  # the modules diffusers keeps in float32
        if {"time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"} & set(name.split(".")):
            module.to(torch.float32)
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen.setdefault(name, out.dtype)
        return hook

    model.condition_embedder.time_embedder.linear_2.register_forward_hook(record("time"))
    model.condition_embedder.text_embedder.linear_1.register_forward_hook(record("text"))
    model.blocks[0].attn1.to_q.register_forward_hook(record("block"))
    x = _inputs()
    flow_matching_loss(model, x, torch.tensor([0.3, 0.6]), torch.randn_like(x.latents), torch.bfloat16)
    assert seen == {"time": torch.float32, "text": torch.bfloat16, "block": torch.bfloat16}


def _stage_run(tmp_path, **train):
    from pipeline.train.stage import run_from_params
    from tests.helpers.train_data import make_dataset

    data = make_dataset(tmp_path, [{"clip_id": f"c{i}", "frames": 17} for i in range(3)])
    p = dict(run_name="run", steps=3, rank=4, alpha=8, lr=5e-3, base_storage="fp32", save_dtype="float32",
             held_out_fraction=0.0, eval_every=0, checkpoint_every=0, progress=False, seed=3, **train)
    return run_from_params({"profile": "tiny", "path": None}, p, cache_dir=str(data / "cache"), data_dir=str(data)), data


def test_the_stage_plans_under_a_budget_and_records_the_plan(tmp_path):
    """On the CPU with ``vram_budget_gib`` set, ``auto`` plans as on a GPU. The tiny model has 2 blocks, so
    swapping or offloading them saves nothing (2 slots, 2 inputs in flight): a budget just under its
    estimate needs FFN chunks. Swap and offload set by hand give a bitwise equal LoRA through the stage."""
    from safetensors.torch import load_file

    plain, data = _stage_run(tmp_path / "a")
    assert plain["memory_plan"] == "everything resident" and plain["vram_budget_gib"] is None
    budget = plain["estimate_peak_gib"] / 0.92 * 0.99
    planned, _ = _stage_run(tmp_path / "b", vram_budget_gib=budget)
    assert planned["ffn_chunks"] > 1 and planned["estimate_peak_gib"] <= budget * 0.92
    assert planned["vram_budget_gib"] == pytest.approx(budget)
    forced, data_c = _stage_run(tmp_path / "c", blocks_to_swap=2, offload_activations=True, ffn_chunks=1)
    assert forced["memory_plan"] == "2 of 2 blocks swapped, activations offloaded"
    assert forced["swap_uploads"] > 0 and forced["offload_gib_down"] > 0
    a = load_file(str(data / "lora/run/run.safetensors"))
    c = load_file(str(data_c / "lora/run/run.safetensors"))
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)


def test_a_budget_that_cannot_fit_is_refused_before_any_weights_load(tmp_path, monkeypatch):
    import pipeline.train.setup as loop

    def refuse(*a, **k):
        raise AssertionError("weights loaded before the plan was checked")

    monkeypatch.setattr(loop, "load_transformer", refuse)
    with pytest.raises(ValueError, match=r"^tiny does not fit in 0.0001 GiB .* needs a budget of [0-9.]+ GiB"):
        _stage_run(tmp_path, vram_budget_gib=0.0001)
    with pytest.raises(ValueError, match="train.blocks_to_swap: 3 is more than the 2 blocks of tiny"):
        _stage_run(tmp_path, blocks_to_swap=3)


@pytest.mark.parametrize("bad, match", [
    ({"blocks_to_swap": -1}, "train.blocks_to_swap must be auto or a number"),
    ({"blocks_to_swap": "all"}, "train.blocks_to_swap must be auto or a number"),
    ({"offload_activations": "yes"}, "train.offload_activations must be auto, true or false"),
    ({"ffn_chunks": 0}, "train.ffn_chunks must be auto or a number >= 1"),
    ({"vram_budget_gib": -4}, "train.vram_budget_gib must be null or a number"),
    ({"blocks_to_swap": 4, "gradient_checkpointing": False}, "need train.gradient_checkpointing: true"),
])
def test_memory_params_errors_are_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        TrainConfig.from_params(bad)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_memory_benchmark_harness_runs_tiny_on_cpu(tmp_path, monkeypatch, capsys):
    """bench/train_memory.py (the GPU check of issue 12) runs its five cases at tiny size on the CPU and
    prints the table; the planned cases stream blocks (numbers are not comparable on a CPU)."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("train_memory", Path(__file__).parents[2] / "bench" / "train_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("OUT", str(tmp_path))
    assert bench.main(["--tiny", "--steps", "1"]) == 0
    results = json.loads((tmp_path / "train_memory.json").read_text())
    assert len(results) == 5 and all("error" not in r for r in results.values()), results
    assert results["14b fp8 in 24 GiB"]["blocks_to_swap"] > 0 and results["14b fp8 resident"]["blocks_to_swap"] == 0
    table = capsys.readouterr().out
    assert "14b fp8 in 16 GiB" in table and "ratio" in table


@pytest.mark.slow
def test_memory_trace_counts_what_a_plan_takes_off_the_device(capsys):
    """bench/memory_trace.py at tiny size: a swapped and chunked plan traces below the resident step, and
    the trace stays within a few percent of the estimate."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("memory_trace", Path(__file__).parents[2] / "bench" / "memory_trace.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench._fake_layerwise_casting()
    config = {**transformer_config("tiny", text_dim=32), "num_layers": 8}
    latent, text = [16, 3, 8, 8], (16, 32)
    resident = bench.trace(config, "bf16", MemoryPlan(), latent, text)
    planned = bench.trace(config, "bf16", MemoryPlan(6, True, 2), latent, text)
    fp8 = bench.trace(config, "fp8", MemoryPlan(6, True, 1), latent, text)
    assert planned < resident and 0 < fp8 < resident
    assert bench.main(["--tiny", "--cases", "1.3b"]) == 0
    out = capsys.readouterr().out
    ratios = [float(line.split()[-2]) for line in out.splitlines() if line.startswith("1.3b") and "blocks" in line]
    assert ratios and all(0.9 < r < 1.2 for r in ratios)


@pytest.mark.parametrize("budget", [None, 12.0])
def test_a_cpu_run_logs_no_gpu_peak_time_or_card(caplog, budget):
    """On the CPU the plan's line says so; no "estimated peak 0.0 GiB ... on an H200" (with or without
    train.vram_budget_gib); on a GPU the estimate is logged."""
    import logging

    from pipeline.train.estimate import Estimate
    from pipeline.train.setup import log_plan

    est = Estimate(peak_gib=0.0, step_s=0.0, weights_gib=0.0, lora_gib=0.0, activations_gib=0.0, tokens=96,
                   gpu="an H200")
    with caplog.at_level(logging.INFO, logger="train"):
        log_plan(MemoryPlan(), est, budget, [16, 5, 8, 8], torch.device("cpu"))
        cpu = "\n".join(caplog.messages)  # the messages alone: a log line's timestamp may hold any digits
        caplog.clear()
        log_plan(MemoryPlan(), est, budget, [16, 5, 8, 8], torch.device("cuda"))
        gpu = "\n".join(caplog.messages)
    assert "CPU run (float32 compute): everything resident" in cpu
    assert "H200" not in cpu and "estimated peak" not in cpu and "s/step" not in cpu
    assert ("12" in cpu) == (budget is not None)
    assert "estimated peak 0.0 GiB" in gpu and "on an H200" in gpu
