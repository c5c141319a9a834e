"""One decode of every source: scene detection and the per-frame measurements the score stage aggregates per clip."""
