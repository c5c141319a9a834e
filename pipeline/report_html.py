"""The report page: one static HTML file, every value escaped, images by relative path.

Sources are collapsible ``<details>`` blocks, so a few thousand clips stay readable, and
thumbnails are ``loading="lazy"``: a closed source loads none of its images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from html import escape

import polars as pl

SCORE_FIELDS = (("motion", "motion"), ("static_fraction", "static"), ("sharpness", "sharp"), ("luma_mean", "luma"),
                ("luma_std", "contrast"), ("black_fraction", "black"), ("white_fraction", "white"))

CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
header{background:#1d3557;color:#fff;padding:14px 24px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85}nav{padding:8px 24px;background:#e3e8ee}nav a{margin-right:18px;color:#1d3557}
main{padding:8px 24px 40px}section{margin-top:18px}h2{font-size:18px;border-bottom:2px solid #1d3557;padding-bottom:3px}
table{border-collapse:collapse;background:#fff;margin:6px 0}td,th{border:1px solid #d5dbe1;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#eef2f6;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}.grid figure{margin:0;background:#fff;border:1px solid #d5dbe1;padding:4px}
.grid img{display:block;width:380px;height:auto}
details{background:#fff;border:1px solid #cfd6dd;border-radius:4px;margin:6px 0;padding:0 8px}
details[open]{padding-bottom:8px}summary{cursor:pointer;padding:6px 0;font-weight:500}
.strip{display:flex;gap:2px}.strip img{height:72px;width:auto;background:#ccd;border:1px solid #aab}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;font-weight:600;color:#fff}
.kept{background:#2e8b57}.rejected{background:#c0392b}.error{background:#7f1d1d}.pending{background:#7f8c8d}
.edited{background:#8e44ad}.failed{background:#d35400}.vlm{background:#2980b9}.warn{background:#b9770e}
.reasons{margin:3px 0 0;padding-left:16px;color:#922b21}.caption{max-width:420px}.muted{color:#6c7a89}
.scores{font-size:12px;color:#34495e;white-space:nowrap}code{font-size:12px}
.missing{background:#fff8e1;border:1px solid #f0c36d;padding:6px 10px;display:inline-block}
"""

EDITED = '<span class="badge edited">edited</span> '

# Open the collapsed source or run that holds the clip a link points to.
SCRIPT = """
function openTarget(){var id=decodeURIComponent(location.hash.slice(1));if(!id)return;
var el=document.getElementById(id);if(!el)return;for(var p=el.parentElement;p;p=p.parentElement){if(p.tagName==='DETAILS')p.open=true;}
el.scrollIntoView();}
window.addEventListener('hashchange',openTarget);window.addEventListener('DOMContentLoaded',openTarget);
"""


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


def e(x) -> str:
    return escape("" if x is None else str(x), quote=True)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def reason_category(reason: str) -> str:
    """The rule a reason comes from: "static: motion 0.0004 < 0.005" -> "static", "duplicate of ab12 (...)" -> "duplicate"."""
    return re.split(r":| of | \(", reason, maxsplit=1)[0].strip() or reason


def _missing(page: ReportPage, *names: str) -> str:
    return "".join(f'<p class="missing">{e(page.missing[n])}</p>' for n in names if n in page.missing)


def _summary(page: ReportPage) -> str:
    rows = []
    if page.sources is not None:
        s = page.sources
        ok = s.filter(pl.col("status") == "ok")
        by_kind = ", ".join(f"{k}: {n}" for k, n in ok.group_by("kind").len().sort("kind").iter_rows())
        rows.append(("sources", f"{s.height} files: {ok.height} ok ({by_kind or 'none'}), {s.height - ok.height} rejected"))
    if page.clips is not None:
        c = page.clips
        counts = dict(c.group_by("verdict").len().iter_rows())
        rows.append(("clips", f"{c.height}: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in ("kept", "rejected", "error", "not filtered")
                                                      if counts.get(v))))
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
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return f'<section id="summary"><h2>Summary</h2><table>{body}</table>{_missing(page, "sources", "clips", "scores", "filter", "captions")}</section>'


def _histograms(page: ReportPage) -> str:
    if not page.histograms:
        body = '<p class="missing">No scores yet (data/scores.parquet not found: run the score stage).</p>'
    else:
        body = '<p class="muted">Green: kept, red: rejected, grey: not filtered yet. Dashed lines: the thresholds in params.yaml <code>filter</code>.</p><div class="grid">' + "".join(
            f'<figure><img src="{e(src)}" alt="{e(title)}" loading="lazy"></figure>' for title, src in page.histograms) + "</div>"
    return f'<section id="histograms"><h2>Score histograms</h2>{body}</section>'


def _verdict(row: dict) -> str:
    v = row["verdict"]
    cls = {"kept": "kept", "rejected": "rejected", "error": "error"}.get(v, "pending")
    out = f'<span class="badge {cls}">{e(v)}</span>'
    reasons = [r for r in (row.get("reasons") or []) if r]
    if reasons:
        out += '<ul class="reasons">' + "".join(f"<li>{e(r)}</li>" for r in reasons) + "</ul>"
    return out


def _caption(row: dict) -> str:
    status = row.get("caption_status")
    if status is None:
        return '<span class="muted">no caption</span>' if row["verdict"] == "kept" else ""
    if status != "ok":
        return f'<span class="badge failed">{e(status)}</span> <span class="muted">{e(row.get("caption_reason"))}</span>'
    badge = '<span class="badge edited">edited</span>' if row.get("caption_source") == "edit" else '<span class="badge vlm">VLM</span>'
    return f'{badge} {e(row.get("caption"))}'


def _strip(page: ReportPage, clip_id: str) -> str:
    imgs = page.thumbs.get(clip_id)
    if not imgs:
        return '<span class="muted">no preview</span>'
    labels = ["first", "middle", "last"] if len(imgs) == 3 else ["photo"]
    return '<div class="strip">' + "".join(
        f'<img src="{e(src)}" alt="{e(lab)} frame" title="{e(lab)}" loading="lazy">' for src, lab in zip(imgs, labels)) + "</div>"


def _scores(row: dict) -> str:
    if row.get("motion") is None and row.get("sharpness") is None:
        return '<span class="muted">not scored</span>'
    parts = [f"{label} {fmt(row.get(col))}" for col, label in SCORE_FIELDS if row.get(col) is not None
             and not (row.get("kind") == "image" and col in ("motion", "static_fraction"))]
    return '<div class="scores">' + "<br>".join(e(p) for p in parts) + "</div>"


def _clip_rows(page: ReportPage, rows: list[dict]) -> str:
    out = []
    for r in rows:
        span = (f"photo, {r['width']}×{r['height']}" if r["kind"] == "image" else
                f"frames {r['start_frame']}–{r['end_frame']} · {fmt(r['start_s'])}–{fmt(r['end_s'])} s · "
                f"{fmt(r['end_s'] - r['start_s'])} s · {r['width']}×{r['height']} @ {fmt(r['fps'])} fps")
        out.append(
            f'<tr id="clip-{e(r["clip_id"])}"><td>{_strip(page, r["clip_id"])}</td>'
            f'<td><code title="{e(r["clip_id"])}">{e(r["clip_id"][:12])}</code><br><span class="muted">{e(span)}</span></td>'
            f"<td>{_scores(r)}</td><td>{_verdict(r)}</td><td class=\"caption\">{_caption(r)}</td></tr>")
    head = "<tr><th>preview</th><th>clip</th><th>scores</th><th>verdict</th><th>caption</th></tr>"
    return f"<table>{head}{''.join(out)}</table>"


def _source_summary(s: dict, counts: dict) -> str:
    if s["status"] != "ok":
        return (f'{e(s["path"])} · <span class="badge rejected">rejected</span> {e(s["reason"])}')
    media = (f'{e(s["kind"])} · {e(s["codec"])} · {s["width"]}×{s["height"]}'
             + (f' · {fmt(s["fps"])} fps · {fmt(s["duration_s"])} s' if s["kind"] != "image" else "")
             + (f' · rotated {s["rotation"]}°' if s.get("rotation") else "") + (" · VFR" if s.get("vfr") else ""))
    tally = ", ".join(f"{counts[v]} {v}" for v in ("kept", "rejected", "error", "not filtered") if counts.get(v)) or "no clips"
    return f'<b>{e(s["path"])}</b> · {media} · {e(tally)}'


def _sources(page: ReportPage) -> str:
    if page.sources is None and page.clips is None:
        return f'<section id="sources"><h2>Sources and clips</h2>{_missing(page, "sources", "clips")}</section>'
    clips = page.clips if page.clips is not None else None
    by_source: dict[str, list[dict]] = {}
    if clips is not None:
        for r in clips.sort("source_path", "start_frame").to_dicts():
            by_source.setdefault(r["source_id"], []).append(r)
    sources = page.sources.sort("path").to_dicts() if page.sources is not None else []
    known = {s["source_id"] for s in sources}
    for sid, rows in by_source.items():  # clips whose source row is gone (e.g. sources table missing)
        if sid not in known:
            sources.append({"source_id": sid, "path": rows[0]["source_path"], "status": "ok", "kind": rows[0]["kind"],
                            "codec": "?", "width": "?", "height": "?", "fps": None, "duration_s": None, "reason": ""})
    blocks = []
    for i, s in enumerate(sources):
        rows = by_source.get(s["source_id"], [])
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        inner = _clip_rows(page, rows) if rows else '<p class="muted">No clips.</p>'
        opened = " open" if i == 0 and rows else ""
        blocks.append(f'<details id="source-{e(s["source_id"])}"{opened}><summary>{_source_summary(s, counts)}</summary>'
                      f'<p class="muted">source_id <code>{e(s["source_id"])}</code></p>{inner}</details>')
    return (f'<section id="sources"><h2>Sources and clips</h2>{_missing(page, "clips", "scores", "filter", "captions")}'
            f'<p class="muted">{len(sources)} sources; click one to see its clips.</p>{"".join(blocks)}</section>')


def _span(r: dict) -> str:
    return "photo" if r["kind"] == "image" else f"{fmt(r['start_s'])}–{fmt(r['end_s'])} s"


def _run(page: ReportPage, run: RunView) -> str:
    md = run.metadata
    flag = "" if run.verified else f' <span class="badge warn">manifest changed</span> {e(run.problem)}'
    c = run.clips
    n_held = int(c["held_out"].sum()) if c.height else 0
    head = (f'<b>{e(run.name)}</b> · {e(md.get("vlp.profile", "?"))} · rank {e(md.get("vlp.rank", "?"))} · '
            f'{e(md.get("vlp.steps", "?"))} steps · {c.height} clips ({n_held} held out){flag}')
    meta = "".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in sorted(md.items()) if k.startswith("vlp."))
    metrics = "".join(f"<tr><th>{e(k)}</th><td>{e(fmt(v, 4))}</td></tr>" for k, v in sorted(run.metrics.items())
                      if not isinstance(v, (dict, list)))
    loss = (f'<img src="{e(run.loss_png)}" alt="loss curve of {e(run.name)}" loading="lazy">' if run.loss_png
            else '<p class="muted">No loss.csv in this run.</p>')
    rows = "".join(
        f'<tr><td><a href="#clip-{e(r["clip_id"])}"><code title="{e(r["clip_id"])}">{e(r["clip_id"][:12])}</code></a></td>'
        f'<td>{e(r["kind"])}</td><td>{e(r["source_path"])}</td><td class="num">{_span(r)}</td>'
        f'<td class="caption">{EDITED if r["edited"] else ""}{e(r["caption"])}</td>'
        f'<td class="num">{r["samples"]}</td><td class="num">{r["times_seen"]}</td><td>{"held out" if r["held_out"] else "trained"}</td></tr>'
        for r in c.to_dicts())
    table = ("<table><tr><th>clip</th><th>kind</th><th>source</th><th>span</th><th>caption</th><th>samples</th><th>times seen</th><th></th></tr>"
             f"{rows}</table>")
    return (f'<details id="run-{e(run.name)}"><summary>{head}</summary><p><code>{e(run.lora)}</code></p>{loss}'
            f'<div class="grid"><table>{meta}</table>{"<table>" + metrics + "</table>" if metrics else ""}</div>{table}</details>')


def _runs(page: ReportPage) -> str:
    problems = "".join(f'<p class="missing">{e(p)}</p>' for p in page.run_problems)
    if not page.runs:
        body = '<p class="missing">No LoRA runs yet (no data/lora/*/lora.safetensors: run the train stage).</p>'
    else:
        body = "".join(_run(page, r) for r in page.runs)
    return f'<section id="runs"><h2>LoRA runs</h2>{problems}{body}</section>'


def render(page: ReportPage) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vlp dataset report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style><script>{SCRIPT}</script></head><body>'
        f'<header><h1>Dataset report</h1><p>video-lora-pipeline · generated {e(page.generated_at)}</p></header>'
        '<nav><a href="#summary">Summary</a><a href="#histograms">Score histograms</a><a href="#sources">Sources and clips</a>'
        '<a href="#runs">LoRA runs</a></nav><main>'
        f"{_summary(page)}{_histograms(page)}{_sources(page)}{_runs(page)}</main></body></html>\n"
    )
