"""The report page: one static HTML file, every value escaped, images by relative path.

The markup is the Jinja2 template ``templates/index.html.j2`` (autoescape always on); this
module turns the tables into plain data for it: lists and dicts of already-formatted strings,
numbers and flags, never HTML.

Sources are collapsible ``<details>`` blocks, so a few thousand clips stay readable, and
thumbnails are ``loading="lazy"``: a closed source loads none of its images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import jinja2
import polars as pl

TEMPLATE = "index.html.j2"

SCORE_FIELDS = (("motion", "motion"), ("static_fraction", "static"), ("sharpness", "sharp"), ("luma_mean", "luma"),
                ("luma_std", "contrast"), ("black_fraction", "black"), ("white_fraction", "white"))
VERDICTS = ("kept", "rejected", "error", "not filtered")


@dataclass
class RunView:
    name: str
    lora: str
    verified: bool
    problem: str
    metadata: dict[str, str]
    clips: pl.DataFrame  # audit.clip_rows of its manifest
    loss_png: str | None = None
    metrics: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)  # per step: {"step", "videos": [{"src", "prompt", "index"}]}


@dataclass
class ReportPage:
    generated_at: str
    sources: pl.DataFrame | None  # sources table
    clips: pl.DataFrame | None  # report.clip_view: one row per clip with verdict, reasons, caption
    histograms: list[tuple[str, str]]  # (title, image path relative to the page)
    thumbs: dict[str, list[str]]  # clip_id -> image paths relative to the page
    runs: list[RunView]
    missing: dict[str, str]  # table name -> why it is missing
    run_problems: list[str] = field(default_factory=list)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def _text(x) -> str:
    return "" if x is None else str(x)


def reason_category(reason: str) -> str:
    """The rule a reason comes from: "static: motion 0.0004 < 0.005" -> "static", "duplicate of ab12 (...)" -> "duplicate"."""
    return re.split(r":| of | \(", reason, maxsplit=1)[0].strip() or reason


def _missing(page: ReportPage, *names: str) -> list[str]:
    return [page.missing[n] for n in names if n in page.missing]


def _summary(page: ReportPage) -> list[dict]:
    rows = []
    if page.sources is not None:
        s = page.sources
        ok = s.filter(pl.col("status") == "ok")
        by_kind = ", ".join(f"{k}: {n}" for k, n in ok.group_by("kind").len().sort("kind").iter_rows())
        rows.append(("sources", f"{s.height} files: {ok.height} ok ({by_kind or 'none'}), {s.height - ok.height} rejected"))
    if page.clips is not None:
        c = page.clips
        counts = dict(c.group_by("verdict").len().iter_rows())
        rows.append(("clips", f"{c.height}: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS if counts.get(v))))
        reasons: dict[str, int] = {}
        for rs in c.filter(pl.col("verdict") == "rejected")["reasons"].to_list():
            for r in rs or []:
                key = reason_category(r)
                reasons[key] = reasons.get(key, 0) + 1
        if reasons:
            rows.append(("rejected for", ", ".join(f"{r} ({n})" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))))
        kept = c.filter(pl.col("verdict") == "kept")
        if "captions" not in page.missing:
            n_ok = kept.filter(pl.col("caption_status") == "ok").height
            n_edit = kept.filter(pl.col("caption_source") == "edit").height
            n_fail = kept.filter(pl.col("caption_status") == "caption_failed").height
            rows.append(("captions", f"{n_ok} of {kept.height} kept clips captioned ({n_edit} edited by hand), {n_fail} failed"))
    rows.append(("LoRA runs", str(len(page.runs)) if page.runs else "none yet"))
    return [{"label": k, "text": _text(v)} for k, v in rows]


def _caption(row: dict) -> dict:
    """``state``: "" (nothing shown), "missing", "failed", "edited" or "vlm"; ``status`` and ``text`` to show with it."""
    status = row.get("caption_status")
    if status is None:
        return {"state": "missing" if row["verdict"] == "kept" else "", "status": "", "text": ""}
    if status != "ok":
        return {"state": "failed", "status": _text(status), "text": _text(row.get("caption_reason"))}
    return {"state": "edited" if row.get("caption_source") == "edit" else "vlm", "status": status,
            "text": _text(row.get("caption"))}


def _thumbs(page: ReportPage, clip_id: str) -> list[dict]:
    imgs = page.thumbs.get(clip_id) or []
    labels = ["first", "middle", "last"] if len(imgs) == 3 else ["photo"]
    return [{"src": src, "label": lab} for src, lab in zip(imgs, labels)]


def _scores(row: dict) -> list[str] | None:
    """The score lines of a clip, or None when it is not scored."""
    if row.get("motion") is None and row.get("sharpness") is None:
        return None
    return [f"{label} {fmt(row.get(col))}" for col, label in SCORE_FIELDS if row.get(col) is not None
            and not (row.get("kind") == "image" and col in ("motion", "static_fraction"))]


def _clip(page: ReportPage, r: dict) -> dict:
    span = (f"photo, {r['width']}×{r['height']}" if r["kind"] == "image" else
            f"frames {r['start_frame']}–{r['end_frame']} · {fmt(r['start_s'])}–{fmt(r['end_s'])} s · "
            f"{fmt(r['end_s'] - r['start_s'])} s · {r['width']}×{r['height']} @ {fmt(r['fps'])} fps")
    v = r["verdict"]
    return {
        "id": r["clip_id"], "short_id": r["clip_id"][:12], "span": span, "thumbs": _thumbs(page, r["clip_id"]),
        "scores": _scores(r), "verdict": _text(v),
        "verdict_class": {"kept": "kept", "rejected": "rejected", "error": "error"}.get(v, "pending"),
        "reasons": [r_ for r_ in (r.get("reasons") or []) if r_], "caption": _caption(r),
    }


def _source(s: dict, rows: list[dict], page: ReportPage, first: bool) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    out = {"id": _text(s["source_id"]), "path": _text(s["path"]), "open": first and bool(rows),
           "rejected": s["status"] != "ok", "reason": _text(s.get("reason")), "media": "", "tally": "",
           "clips": [_clip(page, r) for r in rows]}
    if not out["rejected"]:
        out["media"] = (f'{_text(s["kind"])} · {_text(s["codec"])} · {s["width"]}×{s["height"]}'
                        + (f' · {fmt(s["fps"])} fps · {fmt(s["duration_s"])} s' if s["kind"] != "image" else "")
                        + (f' · rotated {s["rotation"]}°' if s.get("rotation") else "") + (" · VFR" if s.get("vfr") else ""))
        out["tally"] = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts.get(v)) or "no clips"
    return out


def _sources(page: ReportPage) -> list[dict] | None:
    """One dict per source with its clips, or None when there is neither a sources nor a clips table."""
    if page.sources is None and page.clips is None:
        return None
    by_source: dict[str, list[dict]] = {}
    if page.clips is not None:
        for r in page.clips.sort("source_path", "start_frame").to_dicts():
            by_source.setdefault(r["source_id"], []).append(r)
    sources = page.sources.sort("path").to_dicts() if page.sources is not None else []
    known = {s["source_id"] for s in sources}
    for sid, rows in by_source.items():  # clips whose source row is gone (e.g. sources table missing)
        if sid not in known:
            sources.append({"source_id": sid, "path": rows[0]["source_path"], "status": "ok", "kind": rows[0]["kind"],
                            "codec": "?", "width": "?", "height": "?", "fps": None, "duration_s": None, "reason": ""})
    return [_source(s, by_source.get(s["source_id"], []), page, i == 0) for i, s in enumerate(sources)]


def _span(r: dict) -> str:
    return "photo" if r["kind"] == "image" else f"{fmt(r['start_s'])}–{fmt(r['end_s'])} s"


def _run(run: RunView) -> dict:
    md = run.metadata
    c = run.clips
    return {
        "name": run.name, "lora": run.lora, "verified": run.verified, "problem": _text(run.problem),
        "profile": _text(md.get("vlp.profile", "?")), "rank": _text(md.get("vlp.rank", "?")),
        "steps": _text(md.get("vlp.steps", "?")), "n_clips": c.height,
        "n_held": int(c["held_out"].sum()) if c.height else 0, "loss_png": run.loss_png, "samples": run.samples,
        "metadata": [{"key": k, "value": _text(v)} for k, v in sorted(md.items()) if k.startswith("vlp.")],
        "metrics": [{"key": k, "value": fmt(v, 4)} for k, v in sorted(run.metrics.items()) if not isinstance(v, (dict, list))],
        "clips": [{"id": r["clip_id"], "short_id": r["clip_id"][:12], "kind": _text(r["kind"]), "source": _text(r["source_path"]),
                   "span": _span(r), "edited": bool(r["edited"]), "caption": _text(r["caption"]), "samples": r["samples"],
                   "times_seen": r["times_seen"], "held_out": bool(r["held_out"])} for r in c.to_dicts()],
    }


def context(page: ReportPage) -> dict:
    """Everything the template shows, as plain data."""
    return {
        "generated_at": page.generated_at,
        "summary": _summary(page),
        "summary_missing": _missing(page, "sources", "clips", "scores", "filter", "captions"),
        "histograms": [{"title": title, "src": src} for title, src in page.histograms],
        "sources": _sources(page),
        "sources_missing": _missing(page, "sources", "clips"),
        "clips_missing": _missing(page, "clips", "scores", "filter", "captions"),
        "runs": [_run(r) for r in page.runs],
        "run_problems": list(page.run_problems),
    }


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        # escape everything, whatever a template's name: the page shows file names, captions and errors
        autoescape=jinja2.select_autoescape(("html", "j2"), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )


def render(page: ReportPage) -> str:
    return environment().get_template(TEMPLATE).render(context(page))
