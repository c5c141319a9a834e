"""Browsing the report: clip previews that play (a ``<video>`` of the clip file, its poster the middle thumbnail),
filters by verdict, reason and kind and a search of clip id / source / caption (their state in the URL's hash),
histograms coloured by the rule that rejected each clip (a log axis for sharpness, photos apart), every run's loss
on one chart and each run's key settings. The page is checked in headless Chromium: its DOM after the page's
script ran, screenshots with filters applied, and every video of the page loading."""

import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import polars as pl
import pytest

from pipeline.report.plots import (
    HISTOGRAMS,
    KEPT_COLOR,
    RULE_COLORS,
    histogram_data,
    loss_overlay_png,
    plot_frame,
    score_histograms,
    verdict_colors,
)
from pipeline.report.report import ReportConfig, build_report
from tests.helpers.fake_runs import manifest_row, write_run
from tests.helpers.fake_tables import build

THRESHOLDS = {"min_motion": 0.005, "max_static_fraction": 0.75, "min_sharpness": 30.0, "image_min_sharpness": 60.0,
              "min_luma": 30.0, "max_luma": 225.0, "max_duration_s": 0}
SETTINGS = {"ss_learning_rate": "0.0001", "ss_lr_scheduler": "constant", "ss_timestep_sampling": "shift",
            "ss_discrete_flow_shift": "3.0", "ss_min_timestep": "0", "ss_max_timestep": "1000",
            "ss_batch_size_per_device": "1", "ss_gradient_accumulation_steps": "1"}


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, ("chromium is not installed: `bash scripts/setup.sh test` installs Debian's chromium package, "
                 "which the report's browser checks need")
    return exe


def _browser(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


def dump_dom(url: str, profile: Path, budget_ms: int | None = None) -> str:
    """The page's DOM after its scripts ran (and, with ``budget_ms``, after that much virtual time)."""
    extra = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    return _browser([*extra, "--dump-dom", url], profile).stdout


class _Rows(HTMLParser):
    """The clip rows (``tr.clip``) and source blocks (``details.source``) of a page, with their state."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.sources: dict[str, dict] = {}
        self.videos: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "tr" and "clip" in classes:
            self.rows[a["id"].removeprefix("clip-")] = {**a, "hidden": "hidden" in a}
        elif tag == "details" and "source" in classes:
            self.sources[a["id"].removeprefix("source-")] = {"hidden": "hidden" in a, "open": "open" in a}
        elif tag == "video":
            self.videos.append(a)
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])


def parse(html: str) -> _Rows:
    p = _Rows()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    t = build(root)
    ids = t["ids"]
    rows = [manifest_row(ids["v1a"], "a1" * 32, "people/alice_walk.mp4", caption="sks woman walks"),
            manifest_row(ids["p1"], "c3" * 32, "photos/cat <1>.png", caption="sks cat", kind="image", held_out=True)]
    write_run(root / "data/lora/run_one", rows, steps=30, metadata=SETTINGS)
    write_run(root / "data/lora/run_two", rows, rank=8, steps=50, losses=[0.8 / (1 + 0.1 * i) for i in range(50)],
              metadata={**SETTINGS, "ss_learning_rate": "5e-05", "ss_timestep_sampling": "logit_normal",
                        "ss_lr_scheduler": "cosine", "ss_gradient_accumulation_steps": "4"})
    index = build_report(root / "data", root / "data/report", root / "data/lora", THRESHOLDS,
                         ReportConfig(thumb_width=96), root=root)
    return index, ids


def _visible(dom: _Rows, ids: dict) -> set[str]:
    names = {cid: name for name, cid in ids.items()}
    return {names[cid] for cid, row in dom.rows.items() if not row["hidden"]}


def test_every_decodable_clip_has_a_video_of_its_span_with_the_middle_thumbnail_as_poster(report):
    index, ids = report
    page = parse(index.read_text())
    assert len(page.rows) == 6
    previews = [v for v in page.videos if "preview" in (v.get("class") or "")]
    # the four video clips that decode; v2b (split error) has no preview, p1 is a photo. A clip is a span of its
    # source: the video is the source file with a media fragment, the span's start and end in seconds
    spans = sorted(v["src"] for v in previews)
    assert spans == ["../raw/bob.mp4#t=0.000,0.800", "../raw/people/alice_walk.mp4#t=0.000,0.800",
                     "../raw/people/alice_walk.mp4#t=0.800,1.600", "../raw/people/alice_walk.mp4#t=1.600,2.400"]
    for v in previews:
        assert (index.parent / unquote(v["src"].split("#")[0])).is_file()
        assert v["preload"] == "none" and "controls" in v
        assert re.fullmatch(r"thumbs/[0-9a-f]{64}_w96_1\.jpg", v["poster"])  # the middle of first, middle, last
        assert (index.parent / v["poster"]).is_file()
    # the photo opens the photo file (its name percent-encoded: a space and <1>), no fragment
    photo = [h for h in page.links if "raw/" in h]
    assert photo == ["../raw/photos/cat%20%3C1%3E.png"] and (index.parent / unquote(photo[0])).is_file()
    assert 'data-search="e1b' in index.read_text() and "sks woman turns to the camera" in page.rows[ids["v1b"]]["data-search"]


def test_every_video_of_the_page_loads_in_chromium(report, tmp_path):
    index, _ = report
    srcs = [v["src"] for v in parse(index.read_text()).videos]
    # a page beside the report that loads each of its videos (preload=none there) and counts those that decode
    probe = index.parent / "probe_videos.html"
    tags = "".join(f'<video src="{s}" muted preload="auto"></video>' for s in srcs)
    probe.write_text(f"""<!DOCTYPE html><html><head><title>pending</title></head><body>{tags}<script>
var vs=document.querySelectorAll('video'),ok=0,bad=0;
function done(){{document.title='loaded '+ok+' failed '+bad+' of '+vs.length;}}
vs.forEach(function(v){{v.addEventListener('loadeddata',function(){{if(v.readyState>=2&&v.videoWidth>0)ok++;done();}});
v.addEventListener('error',function(){{bad++;done();}});}});
</script></body></html>""")
    try:
        dom = dump_dom(probe.as_uri(), tmp_path / "profile", budget_ms=5000)
    finally:
        probe.unlink()
    assert f"<title>loaded {len(srcs)} failed 0 of {len(srcs)}</title>" in dom, re.findall(r"<title>.*?</title>", dom)
    assert len(srcs) == 4


FILTER_CASES = [  # URL hash -> the clips shown
    ("", {"v1a", "v1b", "v1c", "v2a", "v2b", "p1"}),
    ("verdict=rejected", {"v1c"}),
    ("verdict=error", {"v2b"}),
    ("reason=too%20dark", {"v1c"}),
    ("reason=split%20error", {"v2b"}),
    ("verdict=kept&kind=image", {"p1"}),
    ("verdict=kept&kind=video", {"v1a", "v1b", "v2a"}),
    ("q=turns%20to", {"v1b"}),  # caption text
    ("q=bob.mp4", {"v2a", "v2b"}),  # source
    ("q=E1A0", {"v1a"}),  # clip id, any case
    ("q=SKS+woman", {"v1a", "v1b"}),  # every word, any case
    ("verdict=kept&q=alice", {"v1a", "v1b"}),
    ("q=%3Cb%3Estreet", {"v1a"}),  # the caption's own text, markup and all
    ("reason=blurry", set()),  # a rule no clip broke
    ("", {"v1a", "v1b", "v1c", "v2a", "v2b", "p1"}),  # and back: no hash, no filter
]


def _check(dom: _Rows, html: str, ids: dict, hash_: str, visible: set[str]) -> None:
    assert len(dom.rows) == 6
    assert _visible(dom, ids) == visible, hash_
    count = f"showing {len(visible)} of 6 clips" if hash_ else "6 clips"
    assert f'<span id="filter-count">{count}</span>' in html, hash_
    # a source is shown (and opened) only when one of its clips is, while a filter is on
    alice, bob, broken = dom.sources["a1" * 32], dom.sources["b2" * 32], dom.sources["d4" * 32]
    if hash_:
        assert alice["hidden"] == (not visible & {"v1a", "v1b", "v1c"}), hash_
        assert bob["hidden"] == (not visible & {"v2a", "v2b"}), hash_
        assert broken["hidden"]  # the rejected source has no clip
        assert alice["open"] or not visible & {"v1a", "v1b", "v1c"}
    else:
        assert not any(s["hidden"] for s in dom.sources.values())


@pytest.mark.parametrize(("hash_", "visible"), [FILTER_CASES[0], FILTER_CASES[1], FILTER_CASES[10]])
def test_a_url_hash_opens_the_page_filtered(report, tmp_path, hash_, visible):
    index, ids = report
    html = dump_dom(index.as_uri() + ("#" + hash_ if hash_ else ""), tmp_path / "profile")
    _check(parse(html), html, ids, hash_, visible)
    assert f'data-shown="{len(visible)}"' in html


def test_filters_by_verdict_reason_kind_and_search(report, tmp_path):
    """Every case in one browser: a copy of the page that sets each hash in turn (as a link or the back button would)
    and keeps the rows' state after each."""
    index, ids = report
    cases = [h for h, _ in FILTER_CASES]
    harness = index.parent / "filter_cases.html"
    script = f"""<script>window.addEventListener('load',function(){{var out=[];
{cases!r}.forEach(function(h){{history.replaceState(null,'',h?'#'+h:location.pathname);
window.dispatchEvent(new HashChangeEvent('hashchange'));
out.push({{hash:h,count:document.getElementById('filter-count').textContent,
hidden:Array.prototype.filter.call(document.querySelectorAll('tr.clip'),function(r){{return r.hidden;}}).map(function(r){{return r.id;}}),
sources:Array.prototype.map.call(document.querySelectorAll('details.source'),function(d){{return [d.id,d.hidden,d.open];}})}});}});
var pre=document.createElement('pre');pre.id='cases';pre.textContent=JSON.stringify(out);document.body.appendChild(pre);}});
</script></body>"""
    harness.write_text(index.read_text().replace("</body>", script))
    try:
        html = dump_dom(harness.as_uri(), tmp_path / "profile")
    finally:
        harness.unlink()
    found = re.search(r'<pre id="cases">(.*?)</pre>', html, re.S)
    assert found, "the page's script did not run"
    results = json.loads(unescape(found.group(1)))
    names = {f"clip-{cid}": name for name, cid in ids.items()}
    for (hash_, visible), got in zip(FILTER_CASES, results, strict=True):
        assert got["hash"] == hash_
        assert set(names.values()) - {names[i] for i in got["hidden"]} == visible, hash_
        assert got["count"] == (f"showing {len(visible)} of 6 clips" if hash_ else "6 clips"), hash_
        sources = {sid.removeprefix("source-"): (hidden, is_open) for sid, hidden, is_open in got["sources"]}
        assert sources["d4" * 32][0] == bool(hash_), hash_  # the rejected source (no clip) only shows unfiltered
        if visible & {"v1a", "v1b", "v1c"} and hash_:
            assert sources["a1" * 32] == (False, True), hash_


def _shot(url: str, png: Path, profile: Path, height: int = 2000) -> np.ndarray:
    _browser([f"--screenshot={png}", f"--window-size=1280,{height}", "--hide-scrollbars", url], profile)
    assert png.is_file() and png.stat().st_size > 20_000, f"{png}: no screenshot, or a blank one"
    img = cv2.imread(str(png))
    assert img is not None and img.shape[:2] == (height, 1280)
    return img


def test_screenshots_with_filters_applied(report, tmp_path):
    index, _ = report
    top = _shot(index.as_uri(), tmp_path / "report.png", tmp_path / "profile")
    assert top.std() > 25 and len(np.unique((top[::4, ::4] // 32).reshape(-1, 3), axis=0)) > 40
    # the whole page (the clip list is below the histograms) with filters applied
    shots = {name: _shot(index.as_uri() + h, tmp_path / f"{name}.png", tmp_path / "profile", height=5000)
             for name, h in (("rejected", "#verdict=rejected"), ("photos", "#kind=image"))}
    assert np.array_equal(shots["rejected"][:1000], top[:1000])  # the same page above the clip list
    bottom = {name: img[2000:] for name, img in shots.items()}
    for img in bottom.values():
        assert img.std() > 10  # the clip list, not an empty band
    assert np.abs(bottom["rejected"].astype(int) - bottom["photos"].astype(int)).mean() > 3
    # the rejected clip's badge (#c0392b) shows with verdict=rejected; with kind=image no rejected clip is listed
    badge = lambda img: int(((np.abs(img.astype(int) - (0x2b, 0x39, 0xc0)) < 6).all(axis=2)).sum())  # noqa: E731
    rows = {name: badge(img) for name, img in bottom.items()}
    assert rows["rejected"] > 200 and rows["photos"] < rows["rejected"] / 2, rows


def _scores(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame([{"clip_id": cid, "kind": kind, "status": "ok", "sharpness": sharp, "motion": motion,
                          "luma_mean": luma, "static_fraction": 0.0, "luma_std": 40.0, "black_fraction": 0.0,
                          "white_fraction": 0.0, "border_top": 0.0, "border_bottom": 0.0, "border_left": 0.0,
                          "border_right": 0.0, "width": 640, "height": 360, "duration_s": 3.0}
                         for cid, kind, sharp, motion, luma in rows])


SCORES = [("k1", "video", 120.0, 0.05, 100.0), ("k2", "video", 400.0, 0.08, 120.0), ("k3", "video", 250.0, 0.04, 90.0),
          ("b1", "video", 12.0, 0.06, 110.0), ("b2", "video", 20.0, 0.07, 100.0), ("s1", "video", 300.0, 0.0004, 95.0),
          ("d1", "video", 90.0, 0.05, 12.0), ("n1", "video", 150.0, 0.05, 100.0),
          ("pk", "image", 900.0, None, 100.0), ("pb", "image", 40.0, None, 100.0)]
STATUS = {"k1": "kept", "k2": "kept", "k3": "kept", "b1": "blurry", "b2": "blurry", "s1": "static", "d1": "dark",
          "pk": "kept", "pb": "blurry"}  # n1: not filtered yet


def _hist(column: str):
    return next(h for h in HISTOGRAMS if h.column == column)


def test_histograms_count_clips_per_rule_on_a_log_axis_for_sharpness_with_photos_apart():
    df = plot_frame(_scores(SCORES), STATUS)
    colors = verdict_colors(df["verdict"].to_list())
    # one colour per rule, the commonest rule (blurry, 3 clips) red; kept green; the same map on every histogram
    assert colors["kept"] == KEPT_COLOR and colors["blurry"] == RULE_COLORS[0]
    assert len(set(colors.values())) == len(colors) == 5
    sharp = histogram_data(df, _hist("sharpness"), THRESHOLDS, "video", 20, colors)
    assert {k: sharp.total(k) for k in sharp.counts} == {"kept": 3, "blurry": 2, "static": 1, "dark": 1, "not filtered": 1}
    assert list(sharp.counts)[0] == "kept"
    assert sharp.log_x and np.allclose(np.diff(np.log(sharp.edges)), np.log(sharp.edges[1] / sharp.edges[0]))
    assert sharp.lines == [(30.0, "min 30")]  # the videos' limit only
    # every blurry clip sits below the line, in bins left of it
    blurry_bins = np.nonzero(sharp.counts["blurry"])[0]
    assert all(sharp.edges[i + 1] <= 30.0 * 1.2 for i in blurry_bins)
    # the photos: their own histogram, their own limit, their own counts
    photos = histogram_data(df, _hist("sharpness"), THRESHOLDS, "image", 20, colors)
    assert photos.kind == "image" and "photos" in photos.title
    assert {k: photos.total(k) for k in photos.counts} == {"kept": 1, "blurry": 1}
    assert photos.lines == [(60.0, "min 60")]
    assert histogram_data(df, _hist("motion"), THRESHOLDS, "image", 20, colors) is None  # photos do not move
    # mean luma spans less than two decades: a linear axis; motion spans more: a log one, without being told
    luma = histogram_data(df, _hist("luma_mean"), THRESHOLDS, "video", 20, colors)
    assert not luma.log_x and luma.total("dark") == 1 and [v for v, _ in luma.lines] == [30.0, 225.0]
    motion = histogram_data(df, _hist("motion"), THRESHOLDS, "video", 20, colors)
    assert motion.log_x and motion.total("static") == 1
    # a sharpness of 0 (a flat frame) cannot sit on a log axis: it is counted in the first bin
    flat = plot_frame(_scores(SCORES + [("z", "video", 0.0, 0.05, 100.0)]), {**STATUS, "z": "blurry"})
    zero = histogram_data(flat, _hist("sharpness"), THRESHOLDS, "video", 20, colors)
    assert zero.log_x and zero.clamped == 1 and zero.total("blurry") == 3 and zero.counts["blurry"][0] >= 1


def test_histogram_files_videos_and_photos(tmp_path, monkeypatch):
    import pipeline.report.plots as plots

    drawn = []
    monkeypatch.setattr(plots, "draw_histogram", lambda d, path: (drawn.append(d), path.write_bytes(b"png")))
    made = score_histograms(_scores(SCORES), STATUS, THRESHOLDS, tmp_path, bins=20)
    names = {name for _, name in made}
    assert {"hist_sharpness.png", "hist_sharpness_photos.png", "hist_motion.png", "hist_luma_mean_photos.png"} <= names
    assert "hist_motion_photos.png" not in names and "hist_duration_s_photos.png" not in names
    assert [d.kind for d, _ in made] == sorted((d.kind for d, _ in made), key=lambda k: k == "image")  # videos first
    assert len(drawn) == len(made) and all((tmp_path / n).exists() for n in names)
    # one colour map for every histogram, videos' and photos'
    assert all(d.colors == made[0][0].colors for d, _ in made)
    # an unchanged histogram is not drawn again; a changed threshold redraws the two histograms of its score
    drawn.clear()
    score_histograms(_scores(SCORES), STATUS, THRESHOLDS, tmp_path, bins=20)
    assert drawn == []
    score_histograms(_scores(SCORES), STATUS, {**THRESHOLDS, "min_luma": 40.0}, tmp_path, bins=20)
    assert sorted(d.title for d in drawn) == ["mean luma (0-255)", "mean luma (0-255) · photos"]
    # videos only now: the photos' files go
    score_histograms(_scores(SCORES[:8]), STATUS, THRESHOLDS, tmp_path, bins=20)
    assert not (tmp_path / "hist_sharpness_photos.png").exists() and (tmp_path / "hist_sharpness.png").exists()


def test_page_shows_rule_legend_photo_histograms_overlaid_losses_and_run_settings(report):
    index, _ = report
    text = index.read_text()
    legend = text[text.index('<div class="legend">'):].split("</div>")[0]
    assert "kept (4)" in legend and "static (1)" in legend  # v1c's first reason: static
    photos = text[text.index('id="photo-histograms"'):text.index('<section id="sources">')]
    assert "plots/hist_sharpness_photos.png" in photos and "plots/hist_motion" not in photos
    assert (index.parent / "plots/hist_sharpness_photos.png").is_file()
    assert '<img src="runs/all_runs_loss.png"' in text and (index.parent / "runs/all_runs_loss.png").is_file()
    table = text[text.index('id="run-settings"'):].split("</table>")[0]
    rows = {r.split("</a>")[0].rsplit(">", 1)[1]: re.sub(r"<[^>]+>", "|", r) for r in table.split("<tr>")[2:]}
    assert set(rows) == {"run_one", "run_two"}
    one, two = rows["run_one"], rows["run_two"]
    for cell in ("wan2.1-t2v", "tiny", "|4|", "|0.0001|", "|shift 3|", "|30|", "|1|", "1 + 1 held out"):
        assert cell in one, (cell, one)
    for cell in ("|8|", "|5e-05 (cosine)|", "|logit_normal|", "|50|", "|1 × 4|"):
        assert cell in two, (cell, two)


def test_loss_overlay_needs_a_curve(tmp_path):
    assert not loss_overlay_png([("a", None, None)], tmp_path / "x.png") and not (tmp_path / "x.png").exists()
    curve = pl.DataFrame({"step": [1.0, 2.0, 3.0], "train_loss": [1.0, 0.8, 0.7]})
    assert loss_overlay_png([("a", curve, None), ("b", None, curve.rename({"train_loss": "eval_loss"}))], tmp_path / "y.png")
    assert (tmp_path / "y.png").stat().st_size > 5_000
