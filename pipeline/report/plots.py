"""The report's PNG plots: a histogram of every score (videos and photos apart), its bars coloured by the rule that
rejected each clip and the filter thresholds drawn; each run's loss curves, and every run's overlaid.

matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path, sha256_json, write_json

log = logging.getLogger(__name__)
_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # a change to the drawing code draws every PNG anew

KEPT, NOT_FILTERED = "kept", "not filtered"
KEPT_COLOR, NOT_FILTERED_COLOR = "#2e8b57", "#95a5a6"
# one per rule that rejected clips, the commonest rule first (red); cycled past the twelfth
RULE_COLORS = ("#c0392b", "#e67e22", "#8e44ad", "#2980b9", "#d4ac0d", "#e84393", "#16a085", "#6c3483", "#a04000",
               "#1f3a93", "#5d6d7e", "#b03a2e")
LOG_SPAN = 100.0  # a score whose positive values span more than two decades is drawn on a log axis


@dataclass(frozen=True)
class Histogram:
    column: str  # a column of the plotted frame (scores, or derived: letterbox, short_side, aspect)
    title: str
    videos_only: bool = False  # motion, stillness and duration do not apply to photos
    # (filter param, label) pairs: a vertical line at each param's value in params.yaml `filter`
    thresholds: tuple[tuple[str, str], ...] = ()
    image_thresholds: tuple[tuple[str, str], ...] | None = None  # the photos' histogram's lines (None: thresholds)
    log: bool = False  # a log axis whatever the span (sharpness, the variance of the Laplacian, spans decades)


HISTOGRAMS = (
    Histogram("duration_s", "duration (s)", True, (("min_duration_s", "min"), ("max_duration_s", "max"))),
    Histogram("motion", "motion (frame diagonals / s)", True, (("min_motion", "min"),)),
    Histogram("static_fraction", "static fraction of frame pairs", True, (("max_static_fraction", "max"),)),
    Histogram("sharpness", "sharpness (variance of the Laplacian)", False, (("min_sharpness", "min"),),
              (("image_min_sharpness", "min"),), log=True),
    Histogram("luma_mean", "mean luma (0-255)", False, (("min_luma", "min"), ("max_luma", "max"))),
    Histogram("luma_std", "contrast: luma std", False, (("min_contrast", "min"),)),
    Histogram("black_fraction", "near-black frame fraction", False, (("max_black_fraction", "max"),)),
    Histogram("white_fraction", "near-white frame fraction", False, (("max_white_fraction", "max"),)),
    Histogram("letterbox", "letterbox: top + bottom bars / height", False, (("max_letterbox", "max"),)),
    Histogram("pillarbox", "pillarbox: left + right bars / width", False, (("max_pillarbox", "max"),)),
    Histogram("short_side", "short side (px)", False, (("min_short_side", "min"),)),
    Histogram("aspect", "aspect (width / height)", False, (("min_aspect", "min"), ("max_aspect", "max"))),
)


@dataclass
class HistogramData:
    """What one histogram PNG draws, computed without drawing (:func:`histogram_data`)."""

    column: str
    title: str
    kind: str  # "video" or "image": photos have histograms of their own
    edges: np.ndarray  # bins + 1 bin edges
    log_x: bool
    counts: dict[str, np.ndarray]  # verdict label -> clips per bin, stacked in this order (kept first)
    colors: dict[str, str]  # verdict label -> colour
    lines: list[tuple[float, str]]  # thresholds within the axis: (value, label)
    far: list[tuple[float, str]]  # thresholds far outside the data, named at the edge
    clamped: int = 0  # values <= 0 on a log axis, counted in the first bin

    def total(self, label: str) -> int:
        return int(self.counts[label].sum()) if label in self.counts else 0


def plot_frame(scores: pl.DataFrame, status: dict[str, str]) -> pl.DataFrame:
    """Scores with the derived columns the histograms read and each clip's ``verdict``: ``status``'s label for it
    (kept, or the rule that rejected it), "not filtered" for a clip not in ``status``."""
    return scores.filter(pl.col("status") == "ok").with_columns(
        letterbox=pl.col("border_top") + pl.col("border_bottom"),
        pillarbox=pl.col("border_left") + pl.col("border_right"),
        short_side=pl.min_horizontal("width", "height").cast(pl.Float64),
        aspect=pl.col("width") / pl.col("height"),
        verdict=pl.col("clip_id").replace_strict(status, default=NOT_FILTERED, return_dtype=pl.String),
    )


def verdict_colors(verdicts: list[str]) -> dict[str, str]:
    """A colour per verdict label, the same in every histogram: kept green, not filtered grey, and each rule its own,
    the commonest rule in ``verdicts`` (one label per clip) first, then by name."""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    rules = sorted((v for v in counts if v not in (KEPT, NOT_FILTERED)), key=lambda v: (-counts[v], v))
    colors = {KEPT: KEPT_COLOR}
    colors.update({rule: RULE_COLORS[i % len(RULE_COLORS)] for i, rule in enumerate(rules)})
    colors[NOT_FILTERED] = NOT_FILTERED_COLOR
    return colors


def _save(fig: Figure, path: Path, **kwargs) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, **kwargs)


def _near(value: float, lo: float, hi: float, log_x: bool) -> bool:
    """Whether a threshold lies within the data range widened by its own width on each side."""
    if log_x:
        return value > 0 and lo / (hi / lo) <= value <= hi * (hi / lo)
    span = (hi - lo) or max(abs(hi), 1.0)
    return lo - span <= value <= hi + span


def _threshold_lines(h: Histogram, thresholds: dict, kind: str) -> list[tuple[float, str]]:
    pairs = h.image_thresholds if kind == "image" and h.image_thresholds is not None else h.thresholds
    return [(float(thresholds[k]), f"{label} {thresholds[k]:g}") for k, label in pairs
            if isinstance(thresholds.get(k), (int, float)) and not isinstance(thresholds.get(k), bool)
            and not (k.startswith("max_") and thresholds[k] == 0)]  # max 0 = no limit


def histogram_data(df: pl.DataFrame, h: Histogram, thresholds: dict, kind: str = "video", bins: int = 40,
                   colors: dict[str, str] | None = None) -> HistogramData | None:
    """The bins, per-verdict counts and threshold lines of one histogram of ``df`` (:func:`plot_frame`) for the
    clips of ``kind`` ("video" or "image"); None when there is nothing to plot. ``colors``: :func:`verdict_colors`
    of the whole dataset (by default of ``df``), so that a rule has one colour on every histogram.

    The axis is logarithmic for ``h.log`` (sharpness) and for any score whose positive values span more than two
    decades; values <= 0 on a log axis are counted in the first bin (``clamped``)."""
    if kind == "image" and h.videos_only:
        return None
    df = df.filter((pl.col("kind") == "image") if kind == "image" else (pl.col("kind") != "image"))
    df = df.filter(pl.col(h.column).is_not_null() & pl.col(h.column).is_finite())
    if df.height == 0:
        return None
    colors = colors or verdict_colors(df["verdict"].to_list())
    values = df[h.column].to_numpy().astype(float)
    lines = _threshold_lines(h, thresholds, kind)
    # The axis spans the data; a threshold far outside it (e.g. max duration 60 s for 2-8 s clips)
    # is named at the edge instead of squashing the bars into one column.
    positive = values[values > 0]
    plo, phi = (float(positive.min()), float(positive.max())) if len(positive) else (0.0, 0.0)
    log_x = len(positive) > 0 and (h.log or (len(positive) == len(values) and phi / plo > LOG_SPAN))
    dlo, dhi = (plo, phi) if log_x else (float(values.min()), float(values.max()))
    near = [(v, lab) for v, lab in lines if _near(v, dlo, dhi, log_x)]
    far = [(v, lab) for v, lab in lines if not _near(v, dlo, dhi, log_x)]
    lo, hi = min([dlo] + [v for v, _ in near]), max([dhi] + [v for v, _ in near])
    if log_x:
        if hi / lo < 1.1:
            lo, hi = lo / 1.5, hi * 1.5
        edges = np.geomspace(lo / 1.02, hi * 1.02, bins + 1)
    else:
        pad = (hi - lo) * 0.02 or 0.5
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
    clamped = int((values <= 0).sum()) if log_x else 0
    counts = {}
    for label in colors:
        x = df.filter(pl.col("verdict") == label)[h.column].to_numpy().astype(float)
        if len(x):
            counts[label] = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges)[0]
    for label in sorted(set(df["verdict"].to_list()) - set(colors)):  # a label the given colours lack
        colors = {**colors, label: RULE_COLORS[len(colors) % len(RULE_COLORS)]}
        counts[label] = np.histogram(np.clip(df.filter(pl.col("verdict") == label)[h.column].to_numpy().astype(float),
                                             edges[0], edges[-1]), bins=edges)[0]
    title = h.title + (" · photos" if kind == "image" else "")
    return HistogramData(h.column, title, kind, edges, bool(log_x), counts, colors, near, far, clamped)


def draw_histogram(d: HistogramData, path: Path) -> None:
    """The PNG of :func:`histogram_data`: bars stacked by verdict, threshold lines, a legend with counts below."""
    legend_h = 0.17 * -(-len(d.counts) // 3) + 0.08  # inches below the axes: rows of three verdicts
    fig = Figure(figsize=(4.0, 2.6 + legend_h))
    ax = fig.add_subplot()
    bottom = np.zeros(len(d.edges) - 1)
    for label, counts in d.counts.items():  # one filled step outline per verdict, stacked (one artist each: fast)
        ax.stairs(bottom + counts, d.edges, baseline=bottom, fill=True, color=d.colors[label],
                  label=f"{label} ({int(counts.sum())})")
        bottom = bottom + counts
    ax.set_ylim(0, max(1.0, float(bottom.max()) * 1.05))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = float(d.edges[0]), float(d.edges[-1])
    for value, label in d.lines:
        ax.axvline(value, color="#1f3a93", linestyle="--", linewidth=1.2)
        at = (np.log(value / lo) / np.log(hi / lo)) if d.log_x else (value - lo) / (hi - lo)
        right = at > 0.9  # near the right edge: the label goes on the line's left
        ax.annotate(label, (value, 1), xycoords=("data", "axes fraction"), xytext=(-2 if right else 2, -3), rotation=90,
                    va="top", ha="right" if right else "left", textcoords="offset points", fontsize=7, color="#1f3a93")
    for value, label in d.far:
        right = value > hi
        ax.annotate(f"{label} {'→' if right else '←'}", (1 if right else 0, 1), xycoords="axes fraction",
                    xytext=(-3 if right else 3, -3), textcoords="offset points", va="top",
                    ha="right" if right else "left", fontsize=7, color="#1f3a93")
    if d.log_x:
        ax.set_xscale("log")
        # ticks at 1, 2 and 5 of each decade, as plain numbers (matplotlib's minor labels would overlap)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_title(d.title + (" (log axis)" if d.log_x else ""), fontsize=9)
    if d.clamped:
        ax.set_xlabel(f"{d.clamped} at 0 or below, counted in the first bin", fontsize=7)
    ax.set_ylabel("clips" if d.kind != "image" else "photos", fontsize=8)
    ax.tick_params(labelsize=7)
    height = fig.get_figheight()
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=3, frameon=False, handlelength=1,
               columnspacing=1)
    fig.tight_layout(rect=(0, (legend_h - 0.05) / height, 1, 1))
    _save(fig, path)


def histogram_png(df: pl.DataFrame, h: Histogram, thresholds: dict, path: Path, bins: int = 40, kind: str = "video",
                  colors: dict[str, str] | None = None) -> bool:
    """One histogram of ``kind``'s clips, stacked by verdict, with threshold lines; False when there is nothing to plot."""
    d = histogram_data(df, h, thresholds, kind, bins, colors)
    if d is None:
        return False
    draw_histogram(d, path)
    return True


def score_histograms(scores: pl.DataFrame, status: dict[str, str], thresholds: dict, out_dir: str | os.PathLike,
                     bins: int = 40) -> list[tuple[HistogramData, str]]:
    """Write ``hist_<column>.png`` (videos) and ``hist_<column>_photos.png`` (photos) for every histogram with data;
    returns (histogram, file name) pairs, the videos' first. ``status``: clip_id -> verdict label (kept, or the rule
    that rejected the clip); a clip not in it is "not filtered"."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = plot_frame(scores, status)
    colors = verdict_colors(df["verdict"].to_list())
    drawn = _read_drawn(out_dir / DRAWN)
    made, fingerprints = [], {}
    for kind, suffix in (("video", ""), ("image", "_photos")):
        for h in HISTOGRAMS:
            name = f"hist_{h.column}{suffix}.png"
            d = histogram_data(df, h, thresholds, kind, bins, colors)
            if d is None:
                (out_dir / name).unlink(missing_ok=True)
                continue
            fingerprints[name] = fingerprint(d)
            if drawn.get(name) != fingerprints[name] or not (out_dir / name).exists():
                draw_histogram(d, out_dir / name)
            made.append((d, name))
    write_json(out_dir / DRAWN, fingerprints)
    return made


DRAWN = "drawn.json"  # beside the histograms: each PNG's fingerprint, so an unchanged histogram is not drawn again


def fingerprint(d: HistogramData) -> str:
    """What a histogram PNG shows (its data, and the code and matplotlib that draw it), hashed."""
    return sha256_json([_CODE, matplotlib.__version__, d.column, d.title, d.kind, d.log_x, d.edges.tolist(),
                        [[k, v.tolist()] for k, v in d.counts.items()], [[k, c] for k, c in d.colors.items()],
                        d.lines, d.far, d.clamped])


def _read_drawn(path: Path) -> dict[str, str]:
    try:
        drawn = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return drawn if isinstance(drawn, dict) else {}


def read_curve(path: Path, column: str) -> pl.DataFrame | None:
    """A ``step,<column>`` CSV, or None when it is missing, empty or lacks the column."""
    if not path.exists():
        return None
    try:
        df = pl.read_csv(path)
    except Exception as exc:
        log.warning("%s: unreadable (%s)", path, one_line(exc, with_type=False))
        return None
    if df.height == 0 or "step" not in df.columns or column not in df.columns:
        return None
    return df.select(pl.col("step").cast(pl.Float64), pl.col(column).cast(pl.Float64))


def loss_png(train: pl.DataFrame | None, evals: pl.DataFrame | None, title: str, path: Path) -> bool:
    """Training loss (raw and smoothed) and eval loss against step; False when neither exists."""
    if train is None and evals is None:
        return False
    fig = Figure(figsize=(6, 2.8))
    ax = fig.add_subplot()
    if train is not None:
        steps, loss = train["step"].to_numpy(), train["train_loss"].to_numpy()
        ax.plot(steps, loss, color="#7fb3d5", linewidth=0.8, label="train loss")
        if len(loss) >= 10:
            k = max(2, len(loss) // 20)
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, color="#1f618d", linewidth=1.6, label=f"train, mean of {k}")
    if evals is not None:
        ax.plot(evals["step"].to_numpy(), evals["eval_loss"].to_numpy(), "o-", color="#d35400", markersize=3,
                linewidth=1.2, label="eval loss (held-out clips)")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return True


RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
              "#7f7f7f")


def _smoothed(steps: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A running mean over a twentieth of the curve (at least 2 points) from 10 points on; the raw curve below."""
    if len(loss) < 10:
        return steps, loss, 1
    k = max(2, len(loss) // 20)
    return steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), k


def loss_overlay_png(curves: list[tuple[str, pl.DataFrame | None, pl.DataFrame | None]], path: Path) -> bool:
    """Every run's loss on one chart, a colour per run: train loss (smoothed as in :func:`loss_png`) solid, eval
    loss dashed with dots. ``curves``: (run name, train curve, eval curve); False when no run has either."""
    curves = [(name, t, e) for name, t, e in curves if t is not None or e is not None]
    if not curves:
        return False
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    for i, (name, train, evals) in enumerate(curves):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        if train is not None:
            steps, loss, k = _smoothed(train["step"].to_numpy(), train["train_loss"].to_numpy())
            ax.plot(steps, loss, color=color, linewidth=1.5, label=f"{name}: train" + (f" (mean of {k})" if k > 1 else ""))
        if evals is not None:
            ax.plot(evals["step"].to_numpy(), evals["eval_loss"].to_numpy(), "o--", color=color, markersize=3,
                    linewidth=1.0, label=f"{name}: eval")
    ax.set_title(f"loss of every run ({len(curves)})", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path, bbox_inches="tight")
    return True
