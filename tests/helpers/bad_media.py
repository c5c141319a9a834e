"""A corpus of awkward media, made at test time with ffmpeg and Pillow (nothing committed), and
what the pipeline must do with each kind.

Each ``Kind`` names the file(s) it puts under the raw folder, how to make them, and the
expected outcome through probe, split, score and filter:

- ``kept``: at least one clip of it is in the dataset;
- ``clipped``: split cuts clips from it (filter may keep or reject them on quality);
- ``filtered <category>``: its clips are rejected by that filter rule;
- ``no clip``: split gives a ``skipped`` row saying why (filter carries it to rejected.parquet);
- ``rejected``: probe gives a rejected row;
- ``ignored``: no row anywhere (hidden files, files that are not media).

``reason`` is a regular expression the row's reason must match. The README table "What happens
to bad input" is rendered from the same list (``markdown_table``), and a test checks it.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.synthetic_media import write_video

W, H, FPS = 256, 144, 25


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def sharp_scene(seed: int, w: int = W, h: int = H, n: int = 40, dx: int = 2) -> list[np.ndarray]:
    """``n`` frames of a sharp block texture panning ``dx`` px a frame (passes blur and motion rules)."""
    rng = np.random.default_rng(seed)
    big = rng.integers(30, 226, size=((h + 8) // 8, (w + dx * n + 8) // 8, 3), dtype=np.uint8)
    big = np.kron(big, np.ones((8, 8, 1), dtype=np.uint8))
    return [big[:h, i * dx: i * dx + w].copy() for i in range(n)]


def two_scenes(seed: int, w: int = W, h: int = H, n: int = 40) -> list[np.ndarray]:
    return sharp_scene(seed, w, h, n) + sharp_scene(seed + 1000, w, h, n)


def video(path: Path, seed: int, **kw) -> Path:
    return write_video(path, two_scenes(seed, **kw), fps=FPS, crf=18)


def reencode(seed: int, out: Path, *opts: str, w: int = W, h: int = H) -> None:
    """The seed's video re-encoded by ffmpeg with ``opts`` (codec, pixel format, filters...)."""
    tmp = out.with_name(f".src-{out.name}.mp4")
    video(tmp, seed, w=w, h=h)
    try:
        ffmpeg("-i", str(tmp), *opts, str(out))
    finally:
        tmp.unlink(missing_ok=True)


def photo(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (320, 240), **save) -> Path:
    frame = sharp_scene(seed, size[0], size[1], n=1)[0]
    im = Image.fromarray(frame)
    if mode == "I;16":
        grey = np.asarray(im.convert("L")).astype(np.uint16) * 257
        im = Image.fromarray(grey)
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path, **save)
    return path


def _garbled_jpeg(path: Path) -> None:
    """A JPEG whose middle is zeroed: Pillow decodes it (a grey band), ffmpeg's strict decoder refuses it."""
    photo(path.with_name(".clean.jpg"), 41, quality=92)
    data = bytearray(path.with_name(".clean.jpg").read_bytes())
    path.with_name(".clean.jpg").unlink()
    mid = len(data) // 2
    data[mid: mid + 3000] = bytes(3000)
    path.write_bytes(bytes(data))


def _bomb_png(path: Path) -> None:
    """A tiny PNG whose header claims 40000 x 40000 pixels (a decompression bomb)."""
    photo(path, 42, size=(8, 8))
    data = bytearray(path.read_bytes())
    ihdr = 8  # after the signature: length(4) "IHDR"(4) data(13) crc(4)
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", 40000, 40000)
    data[ihdr + 21: ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4: ihdr + 21])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def _truncated(path: Path, seed: int) -> None:
    reencode(seed, path.with_name(".full.mp4"), "-c:v", "libx264", "-movflags", "+faststart")
    data = path.with_name(".full.mp4").read_bytes()
    path.with_name(".full.mp4").unlink()
    path.write_bytes(data[: len(data) // 2])


def _vfr(path: Path) -> None:
    """Every third frame dropped with the timestamps kept: frame durations alternate 1 and 2 ticks."""
    reencode(16, path, "-vf", "select='not(eq(mod(n\\,3)\\,2))'", "-fps_mode", "vfr", "-c:v", "libx264")


def _late_start(path: Path) -> None:
    """Audio from 0 s, the video stream from 0.6 s (phone and screen recordings)."""
    tmp = path.with_name(".late-src.mp4")
    video(tmp, 17)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=4", "-itsoffset", "0.6", "-i", str(tmp),
           "-map", "1:v", "-map", "0:a", "-c:v", "copy", "-c:a", "aac", str(path))
    tmp.unlink()


def _exif_rotated(path: Path) -> None:
    im = Image.fromarray(sharp_scene(43, 320, 240, n=1)[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    im.save(path, exif=exif.tobytes())


def _symlink(target: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        os.symlink(target, path)
    return make


def _outside(path: Path) -> None:
    outside = path.parent.parent / "outside-the-raw-folder.mp4"
    video(outside, 44)
    os.symlink(outside, path)


def _duplicate(path: Path) -> None:
    shutil.copyfile(path.with_name("dup_a.mp4"), path)


@dataclass(frozen=True)
class Kind:
    name: str  # file (or link, folder) under the raw folder
    what: str  # for the README
    make: Callable[[Path], object]
    outcome: str
    reason: str = ""  # regular expression the row's reason matches (rejected / no clip / filtered)


KINDS: list[Kind] = [
    Kind("ok.mp4", "plain H.264 video, two scenes", lambda p: video(p, 1), "kept"),
    Kind("we ird;$(touch pwned)'n\"ame.mp4", "hostile file name (shell characters, quotes)", lambda p: video(p, 2), "kept"),
    Kind("vidéo 日本.mp4", "non-ASCII file name", lambda p: video(p, 3), "kept"),
    Kind("rotated.mp4", "phone video with a 90° display rotation", lambda p: reencode(4, p, "-c:v", "copy", "-metadata:s:v:0", "rotate=90"), "kept"),
    Kind("late_start.mp4", "video stream starting 0.6 s after the audio", _late_start, "kept"),
    Kind("odd_size.mp4", "odd frame size 333x187 (read whole; a written clip file drops a column and a row for yuv420p)", lambda p: reencode(5, p, "-vf", "format=yuv444p,crop=333:187:0:0", "-c:v", "libx264", "-pix_fmt", "yuv444p", w=334, h=188), "kept"),
    Kind("vfr.mp4", "variable frame rate", _vfr, "kept"),
    Kind("ten_bit.mp4", "10-bit H.264 (yuv420p10le)", lambda p: reencode(6, p, "-c:v", "libx264", "-pix_fmt", "yuv420p10le"), "kept"),
    Kind("hevc.mp4", "HEVC (x265)", lambda p: reencode(7, p, "-c:v", "libx265", "-x265-params", "log-level=error"), "kept"),
    Kind("prores.mov", "ProRes 422", lambda p: reencode(8, p, "-c:v", "prores_ks"), "kept"),
    Kind("alpha.mov", "QuickTime Animation with an alpha channel", lambda p: reencode(9, p, "-c:v", "qtrle", "-pix_fmt", "argb"), "kept"),
    Kind("vp9.webm", "VP9 in WebM", lambda p: reencode(10, p, "-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "30", "-deadline", "realtime"), "kept"),
    Kind("animated.gif", "animated GIF", lambda p: reencode(11, p, "-vf", "fps=12"), "clipped"),
    Kind("truncated.mp4", "video cut off half way", lambda p: _truncated(p, 12), "rejected", r"truncated|unreadable"),
    Kind("audio_only.mp4", "audio without video", lambda p: ffmpeg("-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac", str(p)), "rejected", r"no video stream"),
    Kind("empty.mp4", "empty file", lambda p: p.write_bytes(b""), "rejected", r"empty file"),
    Kind("garbage.mp4", "random bytes named .mp4", lambda p: p.write_bytes(random.Random(13).randbytes(50_000)), "rejected", r"unreadable"),
    Kind("text.mov", "a text file named .mov", lambda p: p.write_text("not a video\n" * 100), "rejected", r"unreadable"),
    Kind("jpeg_named.mp4", "a JPEG renamed .mp4", lambda p: photo(p, 14, format="JPEG"), "no clip", r"no clip: 1 frame"),
    Kind("one_frame.mp4", "a one-frame video", lambda p: write_video(p, sharp_scene(18, n=1)), "no clip", r"no clip: 1 frame"),
    Kind("two_frames.mp4", "a two-frame video", lambda p: write_video(p, sharp_scene(19, n=2)), "no clip", r"no clip: 2 frame"),
    Kind("short.mp4", "0.6 s video (split.min_s is 1 s)", lambda p: write_video(p, sharp_scene(20, n=15)), "no clip", r"shorter than split.min_s"),
    Kind("dup_a.mp4", "a video with a byte-identical copy (dup_b.mp4)", lambda p: video(p, 45), "kept"),
    Kind("dup_b.mp4", "byte-identical copy of dup_a.mp4", _duplicate, "rejected", r"duplicate of dup_a\.mp4"),
    Kind("still.mp4", "a still image as video", lambda p: write_video(p, [sharp_scene(21, n=1)[0]] * 50), "filtered static", r"static"),
    Kind("dark.mp4", "nearly black video", lambda p: write_video(p, [(f // 12) for f in two_scenes(22)]), "filtered dark", r"dark"),
    Kind("photo.jpg", "JPEG photo", lambda p: photo(p, 23, quality=92), "kept"),
    Kind("exif_rotated.jpg", "JPEG with EXIF orientation 6", _exif_rotated, "kept"),
    Kind("gray16.png", "16-bit greyscale PNG", lambda p: photo(p, 24, mode="I;16"), "kept"),
    Kind("rgba.png", "PNG with an alpha channel", lambda p: photo(p, 25, mode="RGBA"), "kept"),
    Kind("cmyk.jpg", "CMYK JPEG", lambda p: photo(p, 26, mode="CMYK", quality=92), "kept"),
    Kind("garbled.jpg", "JPEG with a garbled middle", _garbled_jpeg, "rejected", r"corrupt image data"),
    Kind("truncated.jpg", "JPEG cut off half way", lambda p: p.write_bytes(photo(p, 27, quality=92).read_bytes()[:4000]), "rejected", r"unreadable"),
    Kind("bomb.png", "PNG claiming 40000x40000 pixels (decompression bomb)", _bomb_png, "rejected", r"DecompressionBombError"),
    Kind("fifo.mp4", "a FIFO named .mp4", lambda p: os.mkfifo(p), "rejected", r"not a regular file \(fifo\)"),
    Kind("dangling.mp4", "a symlink to nothing", _symlink("nowhere/missing.mp4"), "rejected", r"dangling symlink"),
    Kind("loop", "a symlink to its own folder", _symlink("."), "rejected", r"symlink loop"),
    Kind("outside.mp4", "a symlink out of the raw folder", _outside, "rejected", r"symlink to outside the raw folder"),
    Kind(".hidden.mp4", "a hidden file", lambda p: video(p, 28), "ignored"),
    Kind("notes.txt", "a file that is not media", lambda p: p.write_text("notes\n"), "ignored"),
]


def make_corpus(raw: Path) -> dict[str, Kind]:
    """Every kind under ``raw`` (created); returns them by file name."""
    raw.mkdir(parents=True, exist_ok=True)
    for k in KINDS:
        k.make(raw / k.name)
    return {k.name: k for k in KINDS}


def markdown_table() -> str:
    """The README's "What happens to bad input" table."""
    lines = ["| input | what happens | reason (as written in the row) |", "|---|---|---|"]
    for k in KINDS:
        reason = k.reason.replace("\\", "").replace("|", " or ") if k.reason else ""
        lines.append(f"| {k.what} | {k.outcome} | {reason} |")
    return "\n".join(lines)
