"""The report's PNG plots: a histogram of every score with the filter thresholds drawn, and loss curves.

matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.core.errors import one_line
from pipeline.core.fs import atomic_path

log = logging.getLogger(__name__)

COLORS = {"kept": "#2e8b57", "rejected": "#c0392b", "not filtered": "#95a5a6"}


@dataclass(frozen=True)
class Histogram:
    column: str  # a column of the plotted frame (scores, or derived: letterbox, short_side, aspect)
    title: str
    videos_only: bool = False  # motion, stillness and duration do not apply to photos
    # (filter param, label) pairs: a vertical line at each param's value in params.yaml `filter`
    thresholds: tuple[tuple[str, str], ...] = ()


HISTOGRAMS = (
    Histogram("duration_s", "duration (s)", True, (("min_duration_s", "min"), ("max_duration_s", "max"))),
    Histogram("motion", "motion (frame diagonals / s)", True, (("min_motion", "min"),)),
    Histogram("static_fraction", "static fraction of frame pairs", True, (("max_static_fraction", "max"),)),
    Histogram("sharpness", "sharpness (variance of the Laplacian)", False,
              (("min_sharpness", "min video"), ("image_min_sharpness", "min image"))),
    Histogram("luma_mean", "mean luma (0-255)", False, (("min_luma", "min"), ("max_luma", "max"))),
    Histogram("luma_std", "contrast: luma std", False, (("min_contrast", "min"),)),
    Histogram("black_fraction", "near-black frame fraction", False, (("max_black_fraction", "max"),)),
    Histogram("white_fraction", "near-white frame fraction", False, (("max_white_fraction", "max"),)),
    Histogram("letterbox", "letterbox: top + bottom bars / height", False, (("max_letterbox", "max"),)),
    Histogram("pillarbox", "pillarbox: left + right bars / width", False, (("max_pillarbox", "max"),)),
    Histogram("short_side", "short side (px)", False, (("min_short_side", "min"),)),
    Histogram("aspect", "aspect (width / height)", False, (("min_aspect", "min"), ("max_aspect", "max"))),
)


def plot_frame(scores: pl.DataFrame, status: dict[str, str]) -> pl.DataFrame:
    """Scores with the derived columns the histograms read and each clip's status (kept/rejected/not filtered)."""
    return scores.filter(pl.col("status") == "ok").with_columns(
        letterbox=pl.col("border_top") + pl.col("border_bottom"),
        pillarbox=pl.col("border_left") + pl.col("border_right"),
        short_side=pl.min_horizontal("width", "height").cast(pl.Float64),
        aspect=pl.col("width") / pl.col("height"),
        verdict=pl.col("clip_id").replace_strict(status, default="not filtered", return_dtype=pl.String),
    )


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _near(value: float, lo: float, hi: float, log_x: bool) -> bool:
    """Whether a threshold lies within the data range widened by its own width on each side."""
    if log_x:
        return value > 0 and lo / (hi / lo) <= value <= hi * (hi / lo)
    span = (hi - lo) or max(abs(hi), 1.0)
    return lo - span <= value <= hi + span


def histogram_png(df: pl.DataFrame, h: Histogram, thresholds: dict, path: Path, bins: int = 40) -> bool:
    """One histogram, stacked by verdict, with threshold lines; False when there is nothing to plot."""
    if h.videos_only:
        df = df.filter(pl.col("kind") != "image")
    df = df.filter(pl.col(h.column).is_not_null() & pl.col(h.column).is_finite())
    if df.height == 0:
        return False
    values = df[h.column].to_numpy().astype(float)
    lines = [(float(thresholds[k]), f"{label} {thresholds[k]:g}") for k, label in h.thresholds
             if isinstance(thresholds.get(k), (int, float)) and not isinstance(thresholds.get(k), bool)
             and not (k.startswith("max_") and thresholds[k] == 0)]  # max 0 = no limit
    # The axis spans the data; a threshold far outside it (e.g. max duration 60 s for 2-8 s clips)
    # is named at the edge instead of squashing the bars into one column.
    dlo, dhi = float(values.min()), float(values.max())
    log_x = dlo > 0 and dhi / dlo > 100
    near = [(v, lab) for v, lab in lines if _near(v, dlo, dhi, log_x)]
    far = [(v, lab) for v, lab in lines if not _near(v, dlo, dhi, log_x)]
    lo, hi = min([dlo] + [v for v, _ in near]), max([dhi] + [v for v, _ in near])
    if log_x and lo > 0:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        log_x = False
        pad = (hi - lo) * 0.02 or 0.5
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
    lines = near
    fig = Figure(figsize=(4.0, 2.9))
    ax = fig.add_subplot()
    groups = [(v, df.filter(pl.col("verdict") == v)[h.column].to_numpy().astype(float)) for v in COLORS]
    groups = [(v, x) for v, x in groups if len(x)]
    ax.hist([x for _, x in groups], bins=edges, stacked=True, color=[COLORS[v] for v, _ in groups],  # type: ignore[arg-type]
            label=[f"{v} ({len(x)})" for v, x in groups])
    for value, label in lines:
        ax.axvline(value, color="#1f3a93", linestyle="--", linewidth=1.2)
        ax.annotate(label, (value, 1), xycoords=("data", "axes fraction"), xytext=(2, -3), rotation=90,
                    va="top", ha="left", textcoords="offset points", fontsize=7, color="#1f3a93")
    for value, label in far:
        right = value > hi
        ax.annotate(f"{label} {'→' if right else '←'}", (1 if right else 0, 1), xycoords="axes fraction",
                    xytext=(-3 if right else 3, -3), textcoords="offset points", va="top",
                    ha="right" if right else "left", fontsize=7, color="#1f3a93")
    if log_x:
        ax.set_xscale("log")
    ax.set_title(h.title, fontsize=9)
    ax.set_ylabel("clips", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False,
              handlelength=1, columnspacing=1)
    fig.tight_layout()
    _save(fig, path)
    return True


def score_histograms(scores: pl.DataFrame, status: dict[str, str], thresholds: dict, out_dir: str | os.PathLike,
                     bins: int = 40) -> list[tuple[Histogram, str]]:
    """Write ``hist_<column>.png`` for every histogram with data; returns (histogram, file name) pairs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = plot_frame(scores, status)
    made = []
    for h in HISTOGRAMS:
        name = f"hist_{h.column}.png"
        if histogram_png(df, h, thresholds, out_dir / name, bins):
            made.append((h, name))
        else:
            (out_dir / name).unlink(missing_ok=True)
    return made


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
