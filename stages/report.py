"""DVC stage: the static dataset report, data/report/index.html (thumbnails, histograms, LoRA runs)."""

import sys

from pipeline.logs import setup_logging
from pipeline.params import load_params
from pipeline.report import ReportConfig, build_report

DATA = "data"
OUT = "data/report"
LORA_DIR = "data/lora"


def main() -> int:
    setup_logging()
    params = load_params()
    thresholds = dict(params.get("filter") or {})  # drawn on the histograms
    build_report(DATA, OUT, LORA_DIR, thresholds, ReportConfig.from_params(dict(params.get("report") or {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
