"""The report stage's runner: the static dataset report, ``report/index.html`` in the data folder."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.layout import Layout
from pipeline.report.report import ReportConfig, build_report


def run(params: dict, layout: Layout) -> Path:
    """Build the report of ``layout``'s tables and LoRA runs; the filter thresholds are drawn on the histograms."""
    thresholds = dict(params.get("filter") or {})
    cfg = ReportConfig.from_params(dict(params.get("report") or {}))
    return build_report(layout.data, layout.report, layout.lora, thresholds, cfg)
