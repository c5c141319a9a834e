"""GPU benchmark of the memory plans: Wan 14B LoRA in 24 and 16 GiB, Wan 1.3B in 8 GiB, each
against the same model all resident, in one call.

Random weights at the real Wan 2.1 shapes, 480x832x81, LoRA r32, AdamW, gradient
checkpointing, the train stage's own set-up and step (``bench/train_step.py``). Each case runs
in its own process (a fresh CUDA context: peaks and the memory cap do not mix):

  14b fp8, everything resident        (the baseline of the 14B rows)
  14b fp8, planned for 24 GiB, capped at 24 GiB (torch.cuda.set_per_process_memory_fraction)
  14b fp8, planned for 16 GiB, capped at 16 GiB
  1.3b bf16, everything resident      (the baseline of the 1.3B row)
  1.3b bf16, planned for 8 GiB, capped at 8 GiB

and the table gives peak GiB (max allocated and max reserved), median s/step over the timed
steps after a warm-up step, and the ratio to the resident run. Targets (issue 12): 14B fits in
24 GiB at <= 1.3x the resident fp8 step; 1.3B fits in 8 GiB at <= 1.05x.

  python bench/train_memory.py                 # on a GPU (about 8 minutes on an H200)
  python bench/train_memory.py --tiny          # CPU smoke test: an 8-block tiny model, budgets as
                                               # fractions of its resident estimate; measures nothing real
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (label, train_step case, budget GiB or None, baseline label, time target)
CASES = [
    ("14b fp8 resident", "14b_fp8", None, None, None),
    ("14b fp8 in 24 GiB", "14b_fp8", 24.0, "14b fp8 resident", 1.3),
    ("14b fp8 in 16 GiB", "14b_fp8", 16.0, "14b fp8 resident", None),
    ("1.3b resident", "1.3b", None, None, None),
    ("1.3b in 8 GiB", "1.3b", 8.0, "1.3b resident", 1.05),
]
# --tiny: fractions of the resident estimate (the tiny model's peak is mostly its rank-32 LoRA and AdamW
# state, so a plan can take only a few percent off it)
TINY_BUDGETS = {24.0: 0.985, 16.0: 0.97, 8.0: 0.98}


def run_case(case: str, budget: float | None, args, timeout: int) -> dict:
    argv = [sys.executable, str(HERE / "train_step.py"), "--cases", case, "--steps", str(args.steps)]
    if budget is not None:
        argv += ["--budget", str(budget)]
    if args.tiny:
        argv += ["--tiny", "--layers", "8"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out, err = proc.stdout, proc.stderr if proc.returncode else ""
    except subprocess.TimeoutExpired as e:
        out, err = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rec = next((r for r in recs if r.get("case") not in (None, "versions")), None)
    if rec is None:
        rec = {"error": (err.strip().splitlines() or ["no result"])[-1]}
    return rec


def table(results: dict[str, dict]) -> list[str]:
    head = (f"{'case':<20}{'plan':<48}{'peak alloc':>11}{'reserved':>10}{'estimate':>10}{'s/step':>9}"
            f"{'ratio':>7}  verdict")
    lines = [head, "-" * len(head)]
    for label, _, budget, base_label, target in CASES:
        r = results.get(label, {})
        if "error" in r or not r:
            lines.append(f"{label:<20}not measured: {r.get('error', 'missing')}")
            continue
        peak = r.get("peak_gb", r.get("peak_rss_gb"))
        reserved = r.get("peak_reserved_gb")
        base = results.get(base_label or "", {})
        ratio = r["step_s_median"] / base["step_s_median"] if base.get("step_s_median") else None
        verdict = ""
        if budget is not None and "peak_gb" in r:
            fits = (reserved or peak) <= r["budget_gib"]
            verdict = f"{'fits' if fits else 'OVER'} {r['budget_gib']:g} GiB"
            if target is not None and ratio is not None:
                verdict += f", time {'PASS' if ratio <= target else 'MISS'} (<= {target}x)"
        elif budget is not None:
            verdict = "CPU: memory not comparable"
        lines.append(f"{label:<20}{r.get('plan', ''):<48}{peak:>11.2f}{(reserved or 0):>10.2f}"
                     f"{r.get('estimate_peak_gb', 0):>10.2f}{r['step_s_median']:>9.3f}"
                     f"{(f'{ratio:.2f}' if ratio else '-'):>7}  {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test at tiny size")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up step (default 5)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds each case may take (default 300)")
    args = ap.parse_args(argv)
    out = Path(os.environ.get("OUT", "/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for label, case, budget, base_label, _ in CASES:
        if args.tiny and budget is not None:  # budgets relative to the tiny model's resident estimate
            budget = results[base_label]["estimate_peak_gb"] * TINY_BUDGETS[budget] / 0.92
        results[label] = run_case(case, budget, args, args.timeout)
        print(f"# {label}: {json.dumps(results[label])}", flush=True)
    (out / "train_memory.json").write_text(json.dumps(results, indent=1))
    device = next((r.get("device") for r in results.values() if r.get("device")), "?")
    print(f"# device: {device}; {'tiny model, CPU' if args.tiny else '480x832x81'}; LoRA r32, AdamW, "
          f"gradient checkpointing; median of {args.steps} steps after a warm-up step")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
