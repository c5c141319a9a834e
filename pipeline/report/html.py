"""The report page: one static HTML file, every value escaped, images by relative path.

The markup is the Jinja2 template ``templates/index.html.j2`` (autoescape always on); this
module turns the tables into plain data for it: lists and dicts of already-formatted strings,
numbers and flags, never HTML.

Sources are collapsible ``<details>`` blocks, so a few thousand clips stay readable, and
thumbnails are ``loading="lazy"``: a closed source loads none of its images. Each clip row carries
``data-verdict``, ``data-reasons`` (its rules, "|"-joined), ``data-kind`` and ``data-search`` (clip id,
source and caption, lower case), which the page's filters read; its ``<video>`` plays the clip's span
of its source file (a ``#t=start,end`` media fragment; ``preload="none"``, the middle thumbnail as poster).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import jinja2
import polars as pl

from pipeline.core import consent as cs

TEMPLATE = "index.html.j2"
CONSENT_CLASS = {cs.YES: "kept", cs.NO: "rejected", cs.WITHDRAWN: "rejected", cs.UNKNOWN: "warn"}

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
    photo_histograms: list[tuple[str, str]] = field(default_factory=list)  # the photos' own, as ``histograms``
    histogram_legend: list[tuple[str, str, int]] = field(default_factory=list)  # (verdict label, colour, clips)
    media: dict[str, str] = field(default_factory=dict)  # clip_id -> its source (+ #t=span), relative to the page
    loss_overlay: str | None = None  # every run's loss on one chart, relative to the page


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
    if page.sources is not None:
        by = page.sources.filter(pl.col("status") == "ok").with_columns(pl.col("consent").fill_null(cs.UNKNOWN))
        by_consent = ", ".join(f"{k} {n}" for k, n in by.group_by("consent").len().sort("consent").iter_rows())
        rows.append(("consent", f"sources: {by_consent or 'none'}"))
    rows.append(("LoRA runs", str(len(page.runs)) if page.runs else "none yet"))
    return [{"label": k, "text": _text(v)} for k, v in rows]


def _consent_by_source(page: ReportPage) -> dict[str, str]:
    """source_id -> consent of the ok sources (a duplicate's row has the same id)."""
    if page.sources is None:
        return {}
    ok = page.sources.filter(pl.col("status") == "ok").select("source_id", "consent").to_dicts()
    return {r["source_id"]: r["consent"] or cs.UNKNOWN for r in ok}


def _face(row: dict, consent: str) -> dict | None:
    """A clip's face flag: None when not looked at; ``text`` and ``warn`` (a face, consent not yes)."""
    share = row.get("face_share")
    if share is None:
        return None
    if not row.get("face"):
        return {"text": "no face" if not share else f"face in {share:.0%} of frames (below score.face_min_share)", "warn": False}
    return {"text": f"face in {share:.0%} of frames, the largest {row.get('face_area') or 0.0:.1%} of the picture",
            "warn": cs.lacks_consent(consent), "consent": consent}


def _likeness_warning(page: ReportPage) -> dict | None:
    """The banner: kept clips that show a face whose source's consent is not yes (None when there are none)."""
    if page.clips is None or "face" not in page.clips.columns:
        return None
    consent = _consent_by_source(page)
    bad = [r for r in page.clips.filter((pl.col("verdict") == "kept") & pl.col("face").fill_null(False)).to_dicts()
           if cs.lacks_consent(consent.get(r["source_id"]))]
    if not bad:
        return None
    paths = sorted({r["source_path"] for r in bad})
    return {"clips": len(bad), "sources": paths,
            "consents": sorted({consent.get(r["source_id"]) or cs.UNKNOWN for r in bad})}


def _consent_rows(page: ReportPage) -> list[dict] | None:
    """One row per source: its record (owner, licence, consent, subject, notes, withdrawal) and its clips with a face."""
    if page.sources is None:
        return None
    faces: dict[str, list[int]] = {}
    if page.clips is not None and "face" in page.clips.columns:
        for sid, verdict, face in page.clips.select("source_id", "verdict", "face").iter_rows():
            f = faces.setdefault(sid, [0, 0, 0])  # clips, with a face, kept with a face
            f[0] += 1
            f[1] += bool(face)
            f[2] += bool(face) and verdict == "kept"
    out = []
    for s in page.sources.sort("path").to_dicts():
        c = s.get("consent") or cs.UNKNOWN
        n, with_face, kept_face = faces.get(s["source_id"], [0, 0, 0]) if s["status"] == "ok" else [0, 0, 0]
        withdrawn = ""
        if c == cs.WITHDRAWN:
            withdrawn = " ".join(x for x in (_text(s.get("withdrawn_on")), f"({s['withdrawn_reason']})" if s.get("withdrawn_reason")
                                             else "") if x)
        out.append({"path": _text(s["path"]), "id": _text(s["source_id"]), "owner": _text(s.get("owner")),
                    "licence": _text(s.get("licence")), "consent": c, "consent_class": CONSENT_CLASS.get(c, "warn"),
                    "subject": _text(s.get("subject")), "notes": _text(s.get("notes")), "withdrawn": withdrawn,
                    "record": _text(s.get("record")), "status": _text(s["status"]),
                    "faces": f"{with_face} of {n}" if n else "–", "warn": bool(kept_face) and cs.lacks_consent(c)})
    return out


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


def reason_keys(r: dict) -> list[str]:
    """What the page's reason filter matches a clip by: the rule of each of a rejected clip's reasons
    (:func:`reason_category`), "split error" or "score error" for an error, nothing for the others."""
    if r["verdict"] == "rejected":
        return list(dict.fromkeys(reason_category(x) for x in (r.get("reasons") or []) if x))
    if r["verdict"] == "error":
        return ["split error" if r.get("clip_status") != "ok" else "score error"]
    return []


def _preview(page: ReportPage, r: dict, thumbs: list[dict]) -> dict:
    """The clip's span of its source to play (``video``: src and poster, the middle thumbnail) or its photo to open
    (``photo``: src), for a clip whose frames decode (it has thumbnails)."""
    src = page.media.get(r["clip_id"]) if thumbs else None
    if not src:
        return {"video": None, "photo": None}
    if r["kind"] == "image":
        return {"video": None, "photo": src}
    return {"video": {"src": src, "poster": thumbs[len(thumbs) // 2]["src"]}, "photo": None}


def _clip(page: ReportPage, r: dict, consent: str = cs.UNKNOWN) -> dict:
    span = (f"photo, {r['width']}×{r['height']}" if r["kind"] == "image" else
            f"frames {r['start_frame']}–{r['end_frame']} · {fmt(r['start_s'])}–{fmt(r['end_s'])} s · "
            f"{fmt(r['end_s'] - r['start_s'])} s · {r['width']}×{r['height']} @ {fmt(r['fps'])} fps")
    v = r["verdict"]
    thumbs = _thumbs(page, r["clip_id"])
    caption = _caption(r)
    return {
        "id": r["clip_id"], "short_id": r["clip_id"][:12], "span": span, "thumbs": thumbs,
        "scores": _scores(r), "verdict": _text(v),
        "verdict_class": {"kept": "kept", "rejected": "rejected", "error": "error"}.get(v, "pending"),
        "reasons": [r_ for r_ in (r.get("reasons") or []) if r_], "caption": caption, "face": _face(r, consent),
        "kind": _text(r["kind"]), **_preview(page, r, thumbs),
        # what the page's filters read (data-* attributes): reason rules joined by "|", lower-case search text
        "reason_keys": "|".join(reason_keys(r)),
        "search": " ".join((r["clip_id"], _text(r.get("source_path")),
                            caption["text"] if caption["state"] in ("vlm", "edited") else "")).lower(),
    }


def _source(s: dict, rows: list[dict], page: ReportPage, first: bool) -> dict:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    consent = s.get("consent") or cs.UNKNOWN
    out = {"id": _text(s["source_id"]), "path": _text(s["path"]), "open": first and bool(rows),
           "rejected": s["status"] != "ok", "reason": _text(s.get("reason")), "media": "", "tally": "",
           "consent": consent, "consent_class": CONSENT_CLASS.get(consent, "warn"),
           "licence": _text(s.get("licence")) or cs.NO_LICENCE,
           "clips": [_clip(page, r, consent) for r in rows]}
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


def _number(x: str | None) -> str:
    """A metadata number as it reads best ("32.0" -> "32", "0.0001" -> "0.0001"), "–" when missing."""
    if x is None or x == "":
        return "–"
    try:
        return f"{float(x):g}"
    except ValueError:
        return str(x)


def run_settings(run: RunView) -> dict:
    """A run's key settings, from its LoRA's metadata (``vlp.*`` and kohya's ``ss_*``) and its metrics.json."""
    md, m = run.metadata, run.metrics
    sampling = md.get("ss_timestep_sampling")
    if sampling == "shift" and md.get("ss_discrete_flow_shift"):
        sampling += f" {_number(md['ss_discrete_flow_shift'])}"
    lo, hi = md.get("ss_min_timestep"), md.get("ss_max_timestep")
    if sampling and lo is not None and hi is not None and (lo, hi) != ("0", "1000"):
        sampling += f", t {lo}–{hi}"
    lr = _number(md.get("ss_learning_rate"))
    if md.get("ss_lr_scheduler") and md["ss_lr_scheduler"] != "constant":
        lr += f" ({md['ss_lr_scheduler']})"
    batch = md.get("ss_batch_size_per_device")
    if batch and md.get("ss_gradient_accumulation_steps") not in (None, "", "1"):
        batch += f" × {md['ss_gradient_accumulation_steps']}"
    train_loss = m.get("train_loss_last10", m.get("final_train_loss"))
    c = run.clips
    held = int(c["held_out"].sum()) if c.height else 0
    return {
        "name": run.name, "family": _text(md.get("vlp.family")) or "–", "profile": _text(md.get("vlp.profile")) or "–",
        "rank": _number(md.get("vlp.rank")), "alpha": _number(md.get("vlp.alpha")), "lr": lr,
        "sampler": sampling or "–", "steps": _number(md.get("vlp.steps")), "batch": batch or "–",
        "clips": f"{c.height - held} + {held} held out",
        "train_loss": fmt(train_loss, 4) if isinstance(train_loss, (int, float)) else "–",
        "eval_loss": fmt(m["eval_loss_final"], 4) if isinstance(m.get("eval_loss_final"), (int, float)) else "–",
    }


def _filters(page: ReportPage) -> dict:
    """The options of the page's clip filters, each with its count of clips."""
    verdicts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    kinds: dict[str, int] = {}
    if page.clips is not None:
        for r in page.clips.to_dicts():
            verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
            for k in reason_keys(r):
                reasons[k] = reasons.get(k, 0) + 1
    return {"verdicts": [{"value": v, "n": verdicts[v]} for v in VERDICTS if v in verdicts],
            "reasons": [{"value": k, "n": n} for k, n in sorted(reasons.items(), key=lambda x: (-x[1], x[0]))],
            "kinds": [{"value": k, "label": "photo" if k == "image" else k, "n": n} for k, n in sorted(kinds.items())],
            "total": page.clips.height if page.clips is not None else 0}


def _run(run: RunView) -> dict:
    md = run.metadata
    c = run.clips
    return {
        "consent": cs.describe(cs.summary(c)) if "consent" in c.columns else "",
        "name": run.name, "lora": run.lora, "verified": run.verified, "problem": _text(run.problem),
        "profile": _text(md.get("vlp.profile", "?")), "rank": _text(md.get("vlp.rank", "?")),
        "steps": _text(md.get("vlp.steps", "?")), "n_clips": c.height,
        "n_held": int(c["held_out"].sum()) if c.height else 0, "loss_png": run.loss_png, "samples": run.samples,
        "metadata": [{"key": k, "value": _text(v)} for k, v in sorted(md.items()) if k.startswith("vlp.")],
        "metrics": [{"key": k, "value": fmt(v, 4)} for k, v in sorted(run.metrics.items()) if not isinstance(v, (dict, list))],
        "clips": [{"id": r["clip_id"], "short_id": r["clip_id"][:12], "kind": _text(r["kind"]), "source": _text(r["source_path"]),
                   "span": _span(r), "edited": bool(r["edited"]), "caption": _text(r["caption"]), "samples": r["samples"],
                   "times_seen": r["times_seen"], "held_out": bool(r["held_out"]), "licence": _text(r.get("licence")),
                   "consent": _text(r.get("consent")) or cs.UNKNOWN,
                   "face": "–" if r.get("face_share") is None else f"{r['face_share']:.0%}" + ("" if r.get("face") else " (none)"),
                   "warn": bool(r.get("face")) and cs.lacks_consent(r.get("consent"))} for r in c.to_dicts()],
    }


def context(page: ReportPage) -> dict:
    """Everything the template shows, as plain data."""
    return {
        "generated_at": page.generated_at,
        "summary": _summary(page),
        "summary_missing": _missing(page, "sources", "clips", "scores", "filter", "captions"),
        "histograms": [{"title": title, "src": src} for title, src in page.histograms],
        "photo_histograms": [{"title": title, "src": src} for title, src in page.photo_histograms],
        "histogram_legend": [{"label": label, "color": color, "n": n} for label, color, n in page.histogram_legend],
        "filters": _filters(page),
        "run_settings": [run_settings(r) for r in page.runs],
        "loss_overlay": page.loss_overlay,
        "sources": _sources(page),
        "sources_missing": _missing(page, "sources", "clips"),
        "consent_rows": _consent_rows(page),
        "likeness_warning": _likeness_warning(page),
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
