"""The one frame reader (pipeline/core/media.py): decord's frames are the frames a plain PyAV
decode loop gives, index for index, on the sample videos, a variable frame rate video, a video
stream that starts after its audio, rotated files, open GOPs and files decord cannot read.

Measured at full size: bitwise equal (max difference 0) on every file here. Scaled while
decoding (``size``), decord's swscale and PyAV's differ by 0.04-0.31 levels on average and by at
most 17 levels at sharp edges.
"""

import subprocess

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.core import media
from pipeline.core.images import open_image_rgb
from tests.helpers.synthetic_media import ffmpeg_binary


def decode_loop(path, indices) -> np.ndarray:
    """The reference: the plain PyAV loop the stages used, frame i = the i-th decoded frame."""
    wanted, got = set(indices), {}
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
    return np.stack([got[i] for i in indices])


def decoded_times(path) -> list[float]:
    with av.open(str(path)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    return [t - times[0] for t in times]


@pytest.fixture
def paths_used(monkeypatch):
    """Which decoder read each call: 'decord' or 'pyav'."""
    used: list[str] = []
    real_decord, real_pyav = media._decord_batches, media._pyav_batches

    def via_decord(*a, **k):
        used.append("decord")
        yield from real_decord(*a, **k)

    def via_pyav(path, probe, wanted, *a, **k):
        if wanted:
            used.append("pyav")
        yield from real_pyav(path, probe, wanted, *a, **k)

    monkeypatch.setattr(media, "_decord_batches", via_decord)
    monkeypatch.setattr(media, "_pyav_batches", via_pyav)
    return used


def pyav_only(monkeypatch):
    monkeypatch.setattr(media, "_decord", lambda: None)


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def spread(n: int) -> list[int]:
    """First, second, last, second to last and a few scattered indices, out of order, one repeated."""
    rng = np.random.default_rng(n)
    mid = sorted(rng.choice(np.arange(2, n - 2), size=min(8, n - 4), replace=False).tolist())
    return [n - 1, 0, *mid, 1, n - 2, mid[0]]


@pytest.fixture(scope="module")
def made(tmp_path_factory, carphone, bikes):
    d = tmp_path_factory.mktemp("media")
    ffmpeg("-i", str(carphone), "-vf", r"select='not(eq(mod(n\,3)\,2))'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-crf", "18", str(d / "vfr.mp4"))
    ffmpeg("-f", "lavfi", "-i", "sine=duration=4", "-itsoffset", "0.6", "-i", str(carphone),
           "-map", "1:v", "-map", "0:a", "-c:v", "copy", "-c:a", "aac", str(d / "late.mp4"))
    for r in (90, 180, 270):
        ffmpeg("-i", str(carphone), "-c", "copy", "-metadata:s:v:0", f"rotate={r}", str(d / f"rot{r}.mp4"))
    ffmpeg("-i", str(bikes), "-frames:v", "60", "-c:v", "libx264", "-g", "12", "-bf", "3", "-x264-params", "open-gop=1",
           "-crf", "23", str(d / "opengop.mp4"))
    ffmpeg("-i", str(bikes), "-frames:v", "60", "-c:v", "libx264", "-g", "12", "-bf", "3", "-crf", "23",
           str(d / "gop.mp4"))
    return d


@pytest.mark.parametrize("name", ["bikes", "carphone", "bunny"])
def test_decord_gives_the_decode_loops_frames_on_the_samples(name, request, paths_used, monkeypatch):
    path = request.getfixturevalue(name)
    n = media.frame_count(path)
    idx = spread(n)
    got = media.read_frames(path, idx)
    assert paths_used == ["decord"]
    assert got.dtype == np.uint8 and got.shape[0] == len(idx)
    assert np.array_equal(got, decode_loop(path, idx))  # bitwise
    pyav_only(monkeypatch)
    assert np.array_equal(media.read_frames(path, idx), got)  # the PyAV path: the same frames
    assert paths_used == ["decord", "pyav"]


def test_frame_count_and_info_match_the_decoder(bikes, carphone, bunny):
    for path, (n, w, h) in ((bikes, (250, 640, 272)), (carphone, (120, 176, 144)), (bunny, (132, 1280, 720))):
        info = media.video_info(path)
        assert (info.n_frames, info.width, info.height, info.rotation) == (n, w, h, 0)
        assert info.times == pytest.approx(decoded_times(path), abs=1e-9)


@pytest.mark.parametrize("name", ["vfr", "late"])
def test_variable_frame_rate_and_late_video_start(name, made, paths_used, monkeypatch):
    path = made / f"{name}.mp4"
    info = media.video_info(path)
    with av.open(str(path)) as c:
        n_decoded = sum(1 for _ in c.decode(video=0))
    assert info.n_frames == n_decoded == (80 if name == "vfr" else 120)
    assert info.times == pytest.approx(decoded_times(path), abs=1e-9)  # from 0, real (uneven) gaps
    if name == "vfr":
        assert len({round(b - a, 4) for a, b in zip(info.times, info.times[1:])}) == 2
    idx = spread(info.n_frames)
    got = media.read_frames(path, idx)
    assert paths_used == ["decord"]
    assert np.array_equal(got, decode_loop(path, idx))
    pyav_only(monkeypatch)
    assert np.array_equal(media.read_frames(path, idx), got)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_file_as_stored_or_upright(rotation, made, paths_used):
    """Frames come as stored (what the stages got from PyAV); upright=True turns them like ffmpeg's
    autorotate, which is also what decord does on its own. Rotated files are read with PyAV."""
    import decord

    path = made / f"rot{rotation}.mp4"
    assert media.video_info(path).rotation == rotation
    idx = [0, 60, 119]
    stored = media.read_frames(path, idx)
    assert np.array_equal(stored, decode_loop(path, idx))
    upright = media.read_frames(path, idx, upright=True)
    assert np.array_equal(upright, np.rot90(stored, rotation // 90, axes=(1, 2)))
    assert paths_used == ["pyav", "pyav"]
    vr = decord.VideoReader(str(path))
    assert np.array_equal(vr.get_batch(idx).asnumpy(), upright)  # decord applies the display rotation
    del vr
    small = media.read_frames(path, [0], size=(72, 88), upright=True)
    assert small.shape == (1, 88, 72, 3)  # size is of the returned (turned) frames


def test_open_gop_is_read_with_pyav(made, paths_used):
    """After a seek decord returns frames a few places off in a stream with leading pictures
    (open GOPs); the reader sees them in the demuxer and decodes such files with PyAV."""
    open_gop, closed = made / "opengop.mp4", made / "gop.mp4"
    assert not media._probe(open_gop).seekable and media._probe(closed).seekable
    idx = [0, 11, 12, 13, 23, 24, 25, 40, 59]
    assert np.array_equal(media.read_frames(open_gop, idx), decode_loop(open_gop, idx))
    assert np.array_equal(media.read_frames(closed, idx), decode_loop(closed, idx))
    assert paths_used == ["pyav", "decord"]


def test_a_file_decord_rejects_is_read_with_pyav(carphone, tmp_path, monkeypatch, paths_used):
    import decord

    def refuse(*a, **k):
        raise decord.DECORDError("cannot open")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    idx = [0, 5, 119]
    assert np.array_equal(media.read_frames(carphone, idx), decode_loop(carphone, idx))
    assert paths_used == ["decord", "pyav"]


def test_av1_decord_cannot_decode_is_read_with_pyav(carphone, tmp_path, paths_used):
    encoders = subprocess.run([ffmpeg_binary(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    codec = next((c for c in ("libaom-av1", "libsvtav1") if c in encoders), None)
    if codec is None:
        pytest.skip("this ffmpeg has no AV1 encoder")
    path = tmp_path / "av1.mp4"
    ffmpeg("-i", str(carphone), "-frames:v", "30", "-c:v", codec, *(["-cpu-used", "8"] if codec == "libaom-av1" else []),
           "-crf", "40", str(path))
    idx = [0, 14, 29]
    assert np.array_equal(media.read_frames(path, idx), decode_loop(path, idx))
    assert paths_used == ["decord", "pyav"]


@pytest.mark.parametrize("name", ["bikes", "carphone", "bunny"])
def test_scaled_while_decoding_close_to_pyav(name, request, monkeypatch):
    path = request.getfixturevalue(name)
    info = media.video_info(path)
    idx = [0, info.n_frames // 2, info.n_frames - 1]
    size = (info.width // 2 // 2 * 2, info.height // 2 // 2 * 2)
    a = media.read_frames(path, idx, size=size)
    pyav_only(monkeypatch)
    b = media.read_frames(path, idx, size=size)
    assert a.shape == b.shape == (3, size[1], size[0], 3)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 32  # measured: mean 0.04-0.31, max 17


def test_iter_frames_batches_and_bad_indices(carphone):
    idx = [0, 7, 8, 30, 64, 65, 119]
    assert np.array_equal(np.stack(list(media.iter_frames(carphone, idx, batch=3))), media.read_frames(carphone, idx))
    with pytest.raises(ValueError, match="increasing"):
        list(media.iter_frames(carphone, [5, 3]))
    with pytest.raises(media.MediaReadError, match=r"carphone_pristine.mp4: frame\(s\) \[120\] not in the file"):
        media.read_frames(carphone, [0, 120])
    assert media.read_frames(carphone, []).shape == (0, 144, 176, 3)


def test_no_video_stream_is_named(tmp_path):
    path = tmp_path / "sound.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", str(path))
    with pytest.raises(media.MediaReadError, match="sound.m4a: no video stream"):
        media.read_frames(path, [0])


def test_photo_is_upright_rgb(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    im.save(tmp_path / "side.jpg", exif=exif, quality=95)
    got = media.read_image(tmp_path / "side.jpg")
    assert got.shape == (40, 20, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.asarray(open_image_rgb(tmp_path / "side.jpg")))
    assert got[:20, :, 0].mean() > 200 and got[20:, :, 0].mean() < 50  # red on top after the turn
