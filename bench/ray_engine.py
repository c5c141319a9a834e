"""Benchmark: curation (split + score) on the local engine vs ``engine: ray`` on one machine, and Ray's per-item overhead.

One local Ray instance (all cores, as ``ray start --head`` would give) is started first and stays up,
as a cluster does; each run is then a fresh driver in its own child process (interpreter start and
imports included) on a fresh clips folder: ``local`` splits and scores with ``jobs`` = all cores
(process pools), ``ray`` joins the instance and runs the same functions as Ray Data tasks (one a
source, one a clip). A new Ray driver gets new worker processes, so its first stage pays their
start; each run then splits the same sources again into a new folder, on warm workers. Runs
alternate (ABAB ...); the table gives the median of each side, the median of the per-pair ratios,
and the load average before each run. Both sides must give the same clip ids and the same scores.

The overhead part maps a no-op function over N items from this process (a warm driver): Ray Data
tasks (1 and 8 items a task) and an actor pool against a plain loop; the difference per item is what
Ray adds to each source or clip. Usage::

    python bench/ray_engine.py [--repeat 3] [--items 200] [VIDEO ...]   # default: the three sample videos
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

HERE = Path(__file__).resolve()


def run_side(side: str, sources_path: Path, raw: Path, work: Path, address: str) -> dict:
    """Split then score, as the stages do, on ``side``'s engine; per-step seconds and the tables' digests."""
    from pipeline.core import schemas
    from pipeline.core.engine import stage_engine
    from pipeline.core.fs import sha256_file
    from pipeline.core.params import resolve_jobs
    from pipeline.curate.score.scoring import ScoreConfig, score_clips
    from pipeline.curate.split.split import SplitConfig, split_sources

    jobs = resolve_jobs(0)
    sources = schemas.read_table(sources_path, "sources")
    steps = {}
    t = time.perf_counter()
    with stage_engine({"engine": side, "ray": {"address": address, "progress_bars": False}}, "bench") as ray:
        steps["connect"] = time.perf_counter() - t
        t = time.perf_counter()
        clips = split_sources(sources, raw, work / "clips", SplitConfig(), jobs=jobs, ray=ray)
        steps["split"] = time.perf_counter() - t
        t = time.perf_counter()
        scores = score_clips(clips, ".", ScoreConfig(), jobs=jobs, ray=ray)  # clip paths are absolute here
        steps["score"] = time.perf_counter() - t
        t = time.perf_counter()  # the same split again into a new folder: Ray's workers are warm now
        again = split_sources(sources, raw, work / "clips-again", SplitConfig(), jobs=jobs, ray=ray)
        steps["split_again"] = time.perf_counter() - t
        assert again["clip_id"].to_list() == clips["clip_id"].to_list()
    schemas.write_table(scores, work / "scores.parquet", "scores")
    return {"steps": steps, "clips": clips.height, "clip_ids": sorted(clips["clip_id"].to_list()),
            "scores_sha256": sha256_file(work / "scores.parquet"), "jobs": jobs}


def measure(side: str, sources: Path, raw: Path, address: str) -> dict:
    """One run of ``side`` in a child process in a fresh folder: wall seconds, load average, its report."""
    with tempfile.TemporaryDirectory(prefix=f"bench-ray-{side}-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, str(HERE), "--side", side, "--sources", str(sources), "--raw", str(raw),
                "--work", tmp, "--report", str(report), "--address", address]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed ({proc.returncode}): {proc.stderr.decode()[-3000:]}")
        return {"wall_s": wall, "load": load, **json.loads(report.read_text())}


def _noop(x):
    return x


class _Noop:
    def __call__(self, x):
        return x


def overhead(items: int) -> dict[str, float]:
    """Seconds per item of a no-op through each path (warm driver; the task workers warmed first; the actor
    pool's per-item cost with its start, measured on one item, taken off)."""
    from pipeline.core.engine import RayConfig
    from pipeline.core.ray_engine import RayEngine

    out = {}
    data = list(range(items))
    t = time.perf_counter()
    assert [_noop(x) for x in data] == data
    out["plain loop"] = (time.perf_counter() - t) / items
    for label, per_task in (("Ray Data tasks, 1 item a task", 1), ("Ray Data tasks, 8 items a task", 8)):
        engine = RayEngine(RayConfig(items_per_task=per_task, progress_bars=False))
        list(engine.map_items(_noop, data[:4], name="noop"))  # warm the task workers
        t = time.perf_counter()
        assert sorted(engine.map_items(_noop, data, name="noop")) == data
        out[label] = (time.perf_counter() - t) / items
    engine = RayEngine(RayConfig(progress_bars=False))
    t = time.perf_counter()
    assert list(engine.map_actors(_Noop, (), data[:1], name="noop", gpu=False)) == data[:1]
    start = time.perf_counter() - t
    t = time.perf_counter()
    assert sorted(engine.map_actors(_Noop, (), data, name="noop", gpu=False)) == data
    out["Ray Data actor pool, 1 actor"] = (time.perf_counter() - t - start) / (items - 1)
    out["actor pool start (s, one no-op item)"] = start
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="*", help="videos to curate (default: the three sample videos)")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs (local, ray), alternating; medians reported")
    ap.add_argument("--items", type=int, default=200, help="items of the no-op overhead measurement")
    for hidden in ("--side", "--sources", "--raw", "--work", "--report", "--address"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # child: one run of one side
        report = run_side(args.side, Path(args.sources), Path(args.raw), Path(args.work), args.address)
        Path(args.report).write_text(json.dumps(report))
        return 0

    import ray

    from pipeline.core import schemas
    from pipeline.curate.probe.table import probe_paths

    if args.videos:
        videos = [Path(v) for v in args.videos]
    else:
        from pipeline.core.samples import SAMPLE_VIDEOS, sample_video

        videos = [sample_video(n) for n in SAMPLE_VIDEOS]
    cores = os.cpu_count() or 1
    t = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    init_s = time.perf_counter() - t
    address = ray.get_runtime_context().gcs_address
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ray-raw-") as raw_dir:
            raw = Path(raw_dir) / "raw"
            raw.mkdir()
            for v in videos:
                shutil.copyfile(v, raw / v.name)
            sources = Path(raw_dir) / "sources.parquet"
            schemas.write_table(probe_paths(sorted(p.resolve() for p in raw.iterdir()), raw.resolve()), sources, "sources")
            runs: dict[str, list[dict]] = {"local": [], "ray": []}
            for i in range(args.repeat):
                for side in (("local", "ray") if i % 2 == 0 else ("ray", "local")):
                    runs[side].append(measure(side, sources, raw, address))
        per_item = overhead(args.items)
    finally:
        ray.shutdown()

    local, on_ray = runs["local"], runs["ray"]
    same = all(r["clip_ids"] == local[0]["clip_ids"] and r["scores_sha256"] == local[0]["scores_sha256"]
               for r in local + on_ray)

    def med(rs: list[dict], key: str) -> float:
        return statistics.median(r["steps"][key] if key in r["steps"] else r[key] for r in rs)

    stage = {s: [r["steps"]["split"] + r["steps"]["score"] for r in runs[s]] for s in runs}
    warm = {s: [r["steps"]["split_again"] + r["steps"]["score"] for r in runs[s]] for s in runs}
    ratios = [b / a for a, b in zip(stage["local"], stage["ray"])]
    warm_ratios = [b / a for a, b in zip(warm["local"], warm["ray"])]
    loads = [r["load"] for r in local + on_ray]
    print(f"videos: {', '.join(v.name for v in videos)}; {cores} cores; {args.repeat} pairs (ABAB), medians; "
          f"load average {min(loads):.2f}-{max(loads):.2f}; ray.init of the instance {init_s:.1f} s")
    print(f"{'':8}{'split s':>9}{'score s':>9}{'split+score':>13}{'split again':>13}{'again+score':>13}"
          f"{'connect s':>11}{'child wall s':>14}{'clips':>7}")
    for s in ("local", "ray"):
        rs = runs[s]
        print(f"{s:8}{med(rs, 'split'):9.2f}{med(rs, 'score'):9.2f}{statistics.median(stage[s]):13.2f}"
              f"{med(rs, 'split_again'):13.2f}{statistics.median(warm[s]):13.2f}"
              f"{med(rs, 'connect'):11.2f}{med(rs, 'wall_s'):14.2f}{rs[0]['clips']:7d}")
    print(f"ratio ray/local, split+score (a new driver: worker start included): median {statistics.median(ratios):.2f} "
          "(pairs: " + " ".join(f"{r:.2f}" for r in ratios) + ")")
    print(f"ratio ray/local, split again+score (warm workers): median {statistics.median(warm_ratios):.2f} "
          "(pairs: " + " ".join(f"{r:.2f}" for r in warm_ratios) + ")")
    print(f"same clip ids and scores on both engines: {'yes' if same else 'NO'}")
    print(f"per-item cost of a no-op, {args.items} items (ms):")
    base = per_item["plain loop"]
    start = per_item.pop("actor pool start (s, one no-op item)")
    for label, sec in per_item.items():
        extra = "" if label == "plain loop" else f"   (+{(sec - base) * 1e3:.2f} ms an item over the loop)"
        print(f"  {label:40}{sec * 1e3:9.3f}{extra}")
    print(f"  an actor pool's start (a no-op actor, one item): {start:.2f} s; a stage's actor also imports "
          "and loads its model")
    print("all runs split+score (s): " + "; ".join(f"{s} " + " ".join(f"{v:.2f}" for v in stage[s]) for s in stage))
    print("all runs split again+score (s): " + "; ".join(f"{s} " + " ".join(f"{v:.2f}" for v in warm[s]) for s in warm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
