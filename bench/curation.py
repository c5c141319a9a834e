"""Benchmark: our whole curation (probe + split + score + filter) against PySceneDetect's own CLI
splitting the same videos (``scenedetect -i VIDEO detect-adaptive split-video -o DIR``, run once per
video, one after the other, as a user would), in the same run.

Each side runs as its own child process (interpreter start and imports included) in a fresh temp
folder; the parent times it and samples the summed PSS (proportional set size: shared pages
counted once) of the child and all its descendants every 50 ms for the peak memory. Ours calls
the functions the DVC stages call, with jobs = all cores. Usage::

    python bench/curation.py [--repeat 3] [VIDEO ...]      # default: the three sample videos

Prints a table (median wall time of the repeats, peak memory) and the ratio ours / theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve()


def run_ours(raw: Path, work: Path) -> dict:
    """Our pipeline, as the probe/split/score/filter stages run it; returns per-step seconds."""
    from pipeline.core import schemas
    from pipeline.core.params import resolve_jobs
    from pipeline.curate.filter.filtering import filter_clips
    from pipeline.curate.filter.rules import FilterConfig
    from pipeline.curate.probe.table import probe_paths
    from pipeline.curate.score.scoring import ScoreConfig, score_clips
    from pipeline.curate.split.split import SplitConfig, split_sources

    jobs = resolve_jobs(0)
    steps = {}
    t = time.perf_counter()
    paths = sorted(p.resolve() for p in raw.iterdir() if p.is_file())
    sources = probe_paths(paths, raw.resolve())
    steps["probe"] = time.perf_counter() - t
    t = time.perf_counter()
    clips = split_sources(sources, raw, work / "clips", SplitConfig(), jobs=jobs)
    steps["split"] = time.perf_counter() - t
    t = time.perf_counter()
    scores = score_clips(clips, ".", ScoreConfig(), jobs=jobs)  # clip paths are absolute here
    steps["score"] = time.perf_counter() - t
    t = time.perf_counter()
    result = filter_clips(clips, scores, FilterConfig())
    schemas.write_table(result.dataset, work / "dataset.parquet", "dataset")
    schemas.write_table(result.rejected, work / "rejected.parquet", "rejected")
    steps["filter"] = time.perf_counter() - t
    return {"steps": steps, "clips": clips.height, "kept": result.dataset.height, "jobs": jobs}


def run_theirs(raw: Path, work: Path) -> dict:
    exe = shutil.which("scenedetect") or str(Path(sys.executable).with_name("scenedetect"))
    n = 0
    for video in sorted(p for p in raw.iterdir() if p.is_file()):
        out = work / video.stem
        subprocess.run([exe, "-i", str(video), "detect-adaptive", "split-video", "-o", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        n += sum(1 for _ in out.glob("*.mp4"))
    return {"clips": n}


def measure(side: str, raw: Path) -> dict:
    """Run one side in a child process in a fresh folder: wall seconds, peak summed PSS, its report."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, str(HERE), "--side", side, "--raw", str(raw), "--work", tmp, "--report", str(report)]
        t0 = time.perf_counter()
        proc = psutil.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [proc, *proc.children(recursive=True)]
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_full_info().pss  # shared pages counted once
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        out = json.loads(report.read_text())
    return {"wall_s": wall, "peak_mib": peak / 2**20, **out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="*", help="videos to curate (default: the three sample videos)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, alternating; the median is reported")
    ap.add_argument("--side", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    ap.add_argument("--raw", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child: run one side, write its report
        fn = run_ours if args.side == "ours" else run_theirs
        Path(args.report).write_text(json.dumps(fn(Path(args.raw), Path(args.work))))
        return 0

    if args.videos:
        videos = [Path(v) for v in args.videos]
    else:
        from pipeline.core.samples import SAMPLE_VIDEOS, sample_video

        videos = [sample_video(n) for n in SAMPLE_VIDEOS]
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as raw_dir:
        raw = Path(raw_dir)
        for v in videos:
            shutil.copyfile(v, raw / v.name)
        runs: dict[str, list[dict]] = {"theirs": [], "ours": []}
        for i in range(args.repeat):
            for side in (("theirs", "ours") if i % 2 == 0 else ("ours", "theirs")):
                runs[side].append(measure(side, raw))
    ours, theirs = runs["ours"], runs["theirs"]
    med = {s: statistics.median(r["wall_s"] for r in runs[s]) for s in runs}
    peak = {s: max(r["peak_mib"] for r in runs[s]) for s in runs}
    steps = {k: statistics.median(r["steps"][k] for r in ours) for k in ours[0]["steps"]}
    cpu = os.cpu_count()
    print(f"videos: {', '.join(v.name for v in videos)}; {cpu} cores; {args.repeat} runs each, median wall time")
    print(f"{'':34}{'wall s':>9}{'peak PSS MiB':>14}{'clips':>7}")
    print(f"{'scenedetect detect-adaptive split':34}{med['theirs']:9.2f}{peak['theirs']:14.0f}{theirs[0]['clips']:7d}")
    print(f"{'vlp probe+split+score+filter':34}{med['ours']:9.2f}{peak['ours']:14.0f}{ours[0]['clips']:7d}"
          f"  (kept {ours[0]['kept']}, jobs {ours[0]['jobs']})")
    print("  ours by step (s, in-process): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    print(f"ratio ours/theirs: {med['ours'] / med['theirs']:.2f} (target <= 1.0)")
    print("all runs (s): " + "; ".join(f"{s} " + " ".join(f"{r['wall_s']:.2f}" for r in runs[s]) for s in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
