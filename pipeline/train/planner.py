"""The memory planner: which blocks to swap, whether to offload activations and how many FFN
chunks, for a memory budget and the largest bucket of a dataset.

Every combination (0..num_layers swapped blocks x offload off/on x 1, 2, 4, 8 FFN chunks; a
param that is set, not ``auto``, fixes its dimension) is estimated (``estimate.estimate_step``).
A plan fits when its estimated peak is at most ``FIT_FRACTION`` of the budget (the rest is for
the allocator's fragmentation, library workspaces and what the estimate does not see). Among
the plans that fit, those whose estimated step is within ``TIE`` of the fastest are equally
fast, and of those the planner takes the one with the fewest swapped blocks, then without
offload, then with the fewest chunks: nothing moves or is recomputed that does not need to be.
When nothing fits, the refusal names the smallest budget that could work.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pipeline.train.estimate import Estimate, MemoryPlan, ModelSize, estimate_step

log = logging.getLogger("train")

FIT_FRACTION = 0.92
TIE = 0.01  # plans within 1% of the fastest estimated step count as equally fast
CHUNK_CHOICES = (1, 2, 4, 8)


class PlanError(ValueError):
    """No plan fits the budget (the message is one line and names the smallest budget that could work)."""


@dataclass(frozen=True)
class Wanted:
    """What the params fix (None: ``auto``, the planner chooses)."""

    blocks_to_swap: int | None = None
    offload_activations: bool | None = None
    ffn_chunks: int | None = None

    @property
    def fixed(self) -> bool:
        return None not in (self.blocks_to_swap, self.offload_activations, self.ffn_chunks)


def gib(x: float) -> str:
    """GiB for a message, rounded up (a budget named this way fits): one decimal, or three significant
    digits below 1 GiB (tiny models)."""
    if x >= 1:
        return f"{math.ceil(x * 10) / 10:.1f}"
    step = 10 ** (math.floor(math.log10(x)) - 2) if x > 0 else 1
    return f"{math.ceil(x / step) * step:.3g}"


def candidates(num_layers: int, wanted: Wanted, checkpointing: bool) -> list[MemoryPlan]:
    swaps = range(num_layers + 1) if wanted.blocks_to_swap is None else [wanted.blocks_to_swap]
    offloads = (False, True) if wanted.offload_activations is None else (wanted.offload_activations,)
    chunks = CHUNK_CHOICES if wanted.ffn_chunks is None else (wanted.ffn_chunks,)
    plans = [MemoryPlan(n, o, c) for c in chunks for o in offloads for n in swaps]
    if not checkpointing:  # swap and offload need the recompute; ``auto`` leaves them off
        plans = [p for p in plans if not p.streams]
    return plans


def plan_memory(size: ModelSize, tokens: int, budget_gib: float, *, text_tokens: int = 512, batch_size: int = 1,
                storage: str = "bf16", checkpointing: bool = True, optimizer_8bit: bool = False,
                gpu: str | None = None, wanted: Wanted = Wanted(), what: str = "the model") -> tuple[MemoryPlan, Estimate]:
    """The plan for ``tokens`` tokens a sample (the largest bucket) under ``budget_gib``, and its estimate."""
    limit = budget_gib * FIT_FRACTION

    def est(plan: MemoryPlan) -> Estimate:
        return estimate_step(size, tokens, text_tokens, batch_size, storage, checkpointing, optimizer_8bit, gpu, plan)

    plans = candidates(size.num_layers, wanted, checkpointing)
    if not plans:
        raise PlanError("train.blocks_to_swap / offload_activations need train.gradient_checkpointing: true")
    estimates = [(p, est(p)) for p in plans]
    fitting = [(p, e) for p, e in estimates if e.peak_gib <= limit]
    if not fitting:
        smallest = min(estimates, key=lambda pe: pe[1].peak_gib)
        need = smallest[1].peak_gib / FIT_FRACTION
        raise PlanError(f"{what} does not fit in {budget_gib:.3g} GiB with any memory plan at {tokens * batch_size:,} "
                        f"tokens a step: the smallest ({smallest[0].describe(size.num_layers)}) needs a budget of "
                        f"{gib(need)} GiB; use a smaller bucket or batch, fp8 storage, or a card with more memory")
    fastest = min(e.step_s for _, e in fitting)
    close = [(p, e) for p, e in fitting if e.step_s <= fastest * (1 + TIE)]
    return min(close, key=lambda pe: (pe[0].blocks_to_swap, pe[0].offload_activations, pe[0].ffn_chunks))


def choose_plan(size: ModelSize, tokens: int, budget_gib: float | None, wanted: Wanted = Wanted(), *,
                what: str = "the model", **kw) -> tuple[MemoryPlan, Estimate]:
    """The run's plan: the params' choices where they are set; the planner's for ``auto`` under a
    budget; with no budget (a CPU run) ``auto`` means everything resident. ``kw``: as for
    ``estimate_step`` (text_tokens, batch_size, storage, checkpointing, optimizer_8bit, gpu). A
    fully set plan that the estimate says will not fit is logged, not refused: the user decides."""
    if budget_gib is not None and not wanted.fixed:
        return plan_memory(size, tokens, budget_gib, wanted=wanted, what=what, **kw)
    plan = MemoryPlan(wanted.blocks_to_swap or 0, bool(wanted.offload_activations), wanted.ffn_chunks or 1)
    est = estimate_step(size, tokens, plan=plan, **kw)
    if budget_gib is not None and est.peak_gib > budget_gib * FIT_FRACTION:
        log.warning("%s: the memory plan set in params.yaml (%s) is estimated at %.1f GiB, over %.0f%% of the "
                    "%.1f GiB budget: it may run out of memory (set the memory params to auto to let the planner choose)",
                    what, plan.describe(size.num_layers), est.peak_gib, FIT_FRACTION * 100, budget_gib)
    return plan, est
