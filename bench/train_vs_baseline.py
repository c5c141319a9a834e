"""GPU check of the train stage: our training step against the naive diffusers + peft baseline,
both run in this one call on the same shapes, printed side by side with ratios.

The baseline is the shared anchor script ``wan_lora_vram.py`` (naive diffusers + peft at
480x832x81, LoRA r32, gradient checkpointing, bf16, random weights at real shapes). Copy it
into an ignored folder of the repo (e.g. ``.bench/``) so it travels to the GPU machine:

  python bench/train_vs_baseline.py --baseline .bench/wan_lora_vram.py            # GPU
  python bench/train_vs_baseline.py --baseline ../shared/bench/wan_lora_vram.py --tiny  # CPU smoke test

Targets (issue 6): our peak memory below the baseline's, our step time within 1.05x of it.
Each side runs in its own process (a fresh CUDA context, so peaks do not mix); their JSON
lines go to $OUT/baseline.jsonl and $OUT/ours.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# baseline case -> our case (same model size, same shapes, same weight storage)
PAIRS = {"t13_cached": "1.3b", "t14_cached": "14b", "t14_fp8": "14b_fp8"}
TINY_PAIRS = {"t13_cached": "tiny"}


def run_side(argv: list[str], out: Path, timeout: int) -> list[dict]:
    """Run one side; return its JSON records (also those printed before a crash or timeout)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        text, err = proc.stdout, proc.stderr if proc.returncode else ""
    except subprocess.TimeoutExpired as exc:
        text, err = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    if err:
        print(f"# {Path(argv[1]).name} ended with: {err.strip().splitlines()[-1] if err.strip() else err}")
    return records


def table(base: dict[str, dict], ours: dict[str, dict], pairs: dict[str, str]) -> list[str]:
    head = f"{'case':<12}{'base GiB':>10}{'ours GiB':>10}{'ratio':>7}{'base s/step':>13}{'ours s/step':>13}{'ratio':>7}  verdict"
    lines = [head, "-" * len(head)]
    for b_case, o_case in pairs.items():
        b, o = base.get(b_case, {}), ours.get(o_case, {})
        if not b or not o or "error" in b or "error" in o:
            why = b.get("error") or o.get("error") or "missing"
            lines.append(f"{o_case:<12}  not measured: {why}")
            continue
        sb, so = b["step_s_median"], o["step_s_median"]
        time_ok = so <= 1.05 * sb
        if "peak_gb" not in o or not b.get("peak_gb"):  # CPU: no device peak to compare
            lines.append(f"{o_case:<12}{'n/a':>10}{'n/a':>10}{'':>7}{sb:13.3f}{so:13.3f}{so / sb:7.2f}"
                         f"  CPU smoke test: memory not comparable, time {'within' if time_ok else 'over'} 1.05x")
            continue
        pb, po = b["peak_gb"], o["peak_gb"]
        mem_ok = po < pb
        verdict = ("PASS" if mem_ok and time_ok else "FAIL") + f" (memory {'<' if mem_ok else '>='} baseline, time {so / sb:.2f}x)"
        lines.append(f"{o_case:<12}{pb:10.2f}{po:10.2f}{po / pb:7.2f}{sb:13.3f}{so:13.3f}{so / sb:7.2f}  {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="path to the shared wan_lora_vram.py")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: checks the harness, measures nothing real")
    ap.add_argument("--cases", default="t13_cached,t14_cached,t14_fp8", help="baseline cases to pair (default all three)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per case (default 4)")
    ap.add_argument("--timeout", type=int, default=540, help="seconds each side may take (default 540)")
    args = ap.parse_args(argv)
    pairs = TINY_PAIRS if args.tiny else {c: PAIRS[c] for c in args.cases.split(",") if c in PAIRS}
    out = Path(os.environ.get("OUT", "/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    tiny = ["--tiny"] if args.tiny else []
    base_argv = [sys.executable, args.baseline, *tiny, "--cases", ",".join(pairs), "--steps", str(args.steps)]
    ours_argv = [sys.executable, str(HERE / "train_step.py"), *tiny, "--cases", ",".join(pairs.values()),
                 "--steps", str(args.steps), "--optimizer", "adamw"]
    base = {r["case"]: r for r in run_side(base_argv, out / "baseline.jsonl", args.timeout)}
    ours = {r["case"]: r for r in run_side(ours_argv, out / "ours.jsonl", args.timeout)}
    device = next((r.get("device") for r in [*base.values(), *ours.values()] if r.get("device")), "?")
    print(f"# device: {device}; 480x832x81 unless --tiny; LoRA r32, gradient checkpointing; {args.steps} timed steps")
    print("\n".join(table(base, ours, pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
