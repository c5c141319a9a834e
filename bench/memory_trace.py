"""Peak device memory of the train stage's own step at real Wan sizes, without a GPU: a
fake-tensor trace, beside the pre-run estimate.

The transformer (random structure at the real 1.3B / 14B shapes) is set up exactly as the
train stage sets it up (LoRA r32 in float32, bf16 or fp8 storage, the condition embedder out of
autocast, the memory plan with block swap / activation offload / FFN chunks through
``apply_memory_plan``) with every tensor a ``FakeTensor``: no memory, no compute, only shapes,
dtypes and lifetimes. One forward and backward at 480x832x81 (bf16 autocast) then runs under a
dispatch mode that adds up the bytes of every live tensor storage on the "device" and keeps the
peak. The "host" memory of the plan (swapped weights, offloaded inputs) comes from a mover
whose buffers are not counted, so the trace sees what the GPU would hold.

What a trace does not see: the CUDA caching allocator's fragmentation and reserve, cuBLAS /
attention workspaces, and the CUDA kernels' own choices (it runs the CPU kernels' shape rules,
e.g. the CPU flash-attention kernel). For the resident 1.3B and 14B bf16 steps it reads
11.84 and 55.51 GiB where the H200 measured 11.72 and 54.71 (max allocated).

  python bench/memory_trace.py                          # 1.3b and 14b (bf16, fp8), resident and planned
  python bench/memory_trace.py --cases 14b_fp8 --budgets 24,16
  python bench/memory_trace.py --tiny                   # seconds: an 8-block tiny model (harness check)

Prints one table: for each case the resident step and the plans the planner picks for each
budget, estimate vs trace (GiB) and the ratio trace / estimate. About a minute per 14B trace on
two cores.
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.transformer import (  # noqa: E402
    _keep_fp32_modules,
    build_on_meta,
    transformer_config,
)
from pipeline.train.conditioning import TrainInputs  # noqa: E402
from pipeline.train.config import TrainConfig  # noqa: E402
from pipeline.train.estimate import MemoryPlan, ModelSize, estimate_step  # noqa: E402
from pipeline.train.memory import apply_memory_plan  # noqa: E402
from pipeline.train.movers import HostMover  # noqa: E402
from pipeline.train.planner import PlanError, plan_memory  # noqa: E402
from pipeline.train.setup import setup_lora_training  # noqa: E402
from pipeline.train.step import flow_matching_loss  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages on the CPU ("the device"), and their peak; storages made
    while ``paused`` or listed in ``host`` are not counted."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.refs: dict[int, weakref.ref] = {}
        self.host: set[int] = set()
        self.paused = False

    def add(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return
        st = t.untyped_storage()
        key = id(st)
        if key in self.refs or key in self.host:
            return
        n = st.nbytes()

        def gone(_, key=key, n=n):
            self.refs.pop(key, None)
            self.current -= n

        self.refs[key] = weakref.ref(st, gone)
        self.current += n
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            for t in tree_flatten(out)[0]:
                self.add(t)
        return out


class TraceMover(HostMover):
    """Host buffers that the tracker does not count (they are host memory on a real card)."""

    def __init__(self, tracker: LiveBytes):
        super().__init__("cpu")
        self.tracker = tracker

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        self.tracker.paused = True
        try:
            t = torch.empty(nbytes, dtype=torch.uint8)
        finally:
            self.tracker.paused = False
        self.tracker.host.add(id(t.untyped_storage()))
        return t

    def upload_new(self, src, after=None):
        return torch.empty(src.shape, dtype=src.dtype).copy_(src), None


def _fake_layerwise_casting() -> None:
    """diffusers' fp8 layerwise casting calls ``module.to(dtype)``, which swaps fake parameters
    (and fails on their weak references); in the trace the same casts go through ``.data``."""
    from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

    def cast(module, dtype):
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)

    def pre_forward(self, module, *args, **kwargs):
        cast(module, self.compute_dtype)
        return args, kwargs

    def post_forward(self, module, output):
        cast(module, self.storage_dtype)
        return output

    LayerwiseCastingHook.pre_forward = pre_forward
    LayerwiseCastingHook.post_forward = post_forward


def trace(config: dict, storage: str, plan: MemoryPlan, latent: list[int], text: tuple[int, int], rank: int = 32) -> float:
    """Peak device GiB of one training forward + backward (the LoRA's AdamW state counted) under ``plan``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = build_on_meta(config)
    finally:
        torch.set_default_dtype(previous)
    _keep_fp32_modules(model)
    model.requires_grad_(False)
    cfg = TrainConfig(rank=rank, alpha=rank, optimizer="adamw")
    setup_lora_training(model, cfg, storage, torch.bfloat16)
    tracker = LiveBytes()
    with FakeTensorMode(allow_non_fake_inputs=True):
        for module in model.modules():  # meta -> fake "cpu" tensors of the same shapes and dtypes
            for k, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[k] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                               requires_grad=p.requires_grad)
            for k, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[k] = torch.empty(b.shape, dtype=b.dtype)
        apply_memory_plan(model, plan, torch.device("cpu"), True, TraceMover(tracker))
        params = [p for p in model.parameters() if p.requires_grad]
        adam = [torch.zeros_like(p) for p in params for _ in range(2)]  # AdamW's exp_avg and exp_avg_sq
        inputs = TrainInputs(torch.randn(1, *latent), torch.randn(1, *text))
        for t in [*model.parameters(), *model.buffers(), *adam]:
            tracker.add(t)
        with tracker:
            for _ in range(2):  # the second step: grads and slots as in a steady run
                tracker.peak = tracker.current
                loss = flow_matching_loss(model, inputs, torch.rand(1), torch.randn_like(inputs.latents), torch.bfloat16)
                loss.backward()
                for p in params:  # the optimizer step reads them, then they are dropped
                    p.grad = None
    return tracker.peak / 2**30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="1.3b,14b,14b_fp8", help="model sizes, _fp8 for fp8 storage (default 1.3b,14b,14b_fp8)")
    ap.add_argument("--budgets", default="24,16,8", help="GiB budgets to plan for (default 24,16,8)")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--tiny", action="store_true", help="an 8-block tiny model at 9x64x64 (harness check)")
    args = ap.parse_args(argv)
    _fake_layerwise_casting()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    frames, height, width = (9, 64, 64) if args.tiny else (args.frames, args.height, args.width)
    latent = [16, (frames - 1) // 4 + 1, height // 8, width // 8]
    text = (16, 32) if args.tiny else (512, 4096)
    tokens = latent[1] * latent[2] * latent[3] // 4
    rows = [("case", "plan", "estimate GiB", "trace GiB", "trace/est", "budget")]
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        shape, storage = case.split("_")[0], "fp8" if case.endswith("fp8") else "bf16"
        config = transformer_config("tiny" if args.tiny else shape, 16, text[1])
        if args.tiny:
            config["num_layers"] = 8
        model = build_on_meta(config)
        setup_lora_training(model, TrainConfig(rank=32, alpha=32), storage, torch.bfloat16)
        size = ModelSize.of(model)
        resident = estimate_step(size, tokens, text[0], storage=storage)
        plans, refused = [(MemoryPlan(), resident, "")], []
        budgets = [float(b) for b in args.budgets.split(",") if b]
        if args.tiny:  # the tiny model's budgets: fractions of its resident estimate
            budgets = [resident.peak_gib * f / 0.92 for f in (0.985, 0.97)]
        for budget in budgets:
            try:
                plan, est = plan_memory(size, tokens, budget, text_tokens=text[0], storage=storage)
            except PlanError as e:
                need = str(e).split("needs a budget of ")[1].split(";")[0]
                refused.append((case, f"does not fit in {budget:g} GiB (needs {need})", "", "", "", f"{budget:g}"))
                continue
            if plan != MemoryPlan():
                plans.append((plan, est, f"{budget:.3g}"))
        for plan, est, budget in plans:
            t0 = time.time()
            peak = trace(config, storage, plan, latent, text)
            print(f"# {case} {plan.describe(size.num_layers)}: trace {peak:.3f} GiB, estimate {est.peak_gib:.3f} GiB "
                  f"({time.time() - t0:.0f} s)", flush=True)
            rows.append((case, plan.describe(size.num_layers), f"{est.peak_gib:.2f}", f"{peak:.2f}",
                         f"{peak / est.peak_gib:.3f}", budget))
        rows += refused
    print(f"# fake-tensor trace of one training step, {width}x{height}x{frames}, LoRA r32 + AdamW state, bf16 autocast")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
