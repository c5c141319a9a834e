"""dvc.yaml's score plots use the templates in .dvc/plots/: `dvc plots show` fills them from the filter stage's
data/plots/scores.csv, each clip coloured by its verdict (kept, or the rule that rejected it) with the thresholds in
effect drawn as rules. Drawing them needs vega, which `dvc plots show`'s HTML loads from a CDN (the offline view is
`vlp report`); here the filled Vega-Lite specs are checked as data."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.curate.filter.filtering import filter_clips
from pipeline.curate.filter.rules import FilterConfig
from tests.helpers.fake_tables import build

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / ".dvc" / "plots"


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "dvc"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"dvc {' '.join(args)}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def test_score_plots_use_the_verdict_templates():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    scores = [p for p in plots if "data/plots/scores.csv" in json.dumps(p)]
    assert len(scores) == 4
    for plot in scores:
        (spec,) = plot.values()
        assert spec["template"] in ("verdict_bars", "verdict_scatter")
        assert (TEMPLATES / f"{spec['template']}.json").is_file()


def test_dvc_plots_show_fills_the_templates(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, root / f)
    _dvc(["init", "--no-scm", "-q"], root)
    shutil.copytree(TEMPLATES, root / ".dvc" / "plots")
    # the filter stage's plots data of a small dataset: a photo, videos kept, one rejected by two rules
    t = build(tmp_path / "data")
    cfg = FilterConfig(min_duration_s=0.5, min_short_side=64, min_motion=0.0, max_static_fraction=0.99,
                       dedup_max_distance=-1)
    result = filter_clips(t["clips"], t["scores"], cfg)
    (root / "data/plots").mkdir(parents=True)
    result.plot_rows.write_csv(root / "data/plots/scores.csv")
    assert sorted(result.plot_rows["verdict"].to_list()) == ["dark", "kept", "kept", "kept", "kept"]

    shown = json.loads(_dvc(["plots", "show", "--json"], root).stdout)
    data = shown["data"]
    titles = [next(iter(p)) for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
              if "data/plots/scores.csv" in json.dumps(p)]
    assert set(titles) <= set(data), list(data)
    for name in titles:
        (plot,) = data[name]
        spec = plot["content"]
        assert plot["type"] == "vega" and "layer" in spec, name
        marks = [layer["mark"]["type"] for layer in spec["layer"]]
        assert marks[0] in ("bar", "point") and marks.count("rule") >= 2, marks
        main = spec["layer"][0]["encoding"]
        assert main["color"]["field"] == "verdict" and main["color"]["sort"] == ["kept"]
        x = main["x"]["field"]
        # the threshold columns of the plotted score, filled in from the plot's x (and y) field
        calcs = [t["calculate"] for t in spec["transform"]]
        assert f"toNumber(datum['{x}_min'])" in calcs and f"toNumber(datum['{x}_max'])" in calcs
        assert "<DVC_METRIC" not in json.dumps(spec)
        rows = spec["data"]["values"]
        assert len(rows) == 5 and {r["verdict"] for r in rows} == {"kept", "dark"}
        assert {r["kind"]: r["sharpness_min"] for r in rows} == {"video": "30.0", "image": "60.0"}
        assert all(f"{x}_min" in r for r in rows)
    scatter = data["motion vs sharpness"][0]["content"]
    assert scatter["layer"][0]["encoding"]["shape"]["field"] == "kind"
    y_calcs = [t["calculate"] for t in scatter["transform"]]
    assert "toNumber(datum['sharpness_min'])" in y_calcs

    # the HTML that `dvc plots show` writes loads vega from a CDN: it draws nothing offline (hence `vlp report`)
    _dvc(["plots", "show", "-o", "html"], root)
    page = (root / "html" / "index.html").read_text()
    assert "cdn.jsdelivr.net/npm/vega" in page and '"verdict"' in page
