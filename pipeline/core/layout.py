"""Where every stage reads and writes, relative to one data folder (``data/`` for DVC).

The DVC stages and the ``vlp`` commands run the same stage runners on a ``Layout``: the stages
on ``data/``, a command on the folder it is given, so the two can never write different files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    data: Path = Path("data")

    @classmethod
    def of(cls, data: str | os.PathLike = "data") -> Layout:
        return cls(Path(data))

    # curate
    @property
    def listing(self) -> Path:
        return self.data / "raw.listing.json"

    @property
    def probe_cache(self) -> Path:
        return self.data / ".probe-cache.json"

    @property
    def sources(self) -> Path:
        return self.data / "sources.parquet"

    @property
    def clips_dir(self) -> Path:
        return self.data / "clips"

    @property
    def clips(self) -> Path:
        return self.data / "clips.parquet"

    @property
    def scores(self) -> Path:
        return self.data / "scores.parquet"

    @property
    def dataset(self) -> Path:
        return self.data / "dataset.parquet"

    @property
    def rejected(self) -> Path:
        return self.data / "rejected.parquet"

    @property
    def score_plots(self) -> Path:
        return self.data / "plots" / "scores.csv"

    def metrics(self, stage: str) -> Path:
        return self.data / "metrics" / f"{stage}.json"

    def timings(self, name: str) -> Path:
        """What this machine measured (seconds, throughput, memory): not tracked by DVC (``core.timings``)."""
        return self.data / "timings" / f"{name}.json"

    # caption
    @property
    def captions(self) -> Path:
        return self.data / "captions.parquet"

    @property
    def caption_parts(self) -> Path:
        return self.data / "captions.parts"

    @property
    def caption_edits(self) -> Path:
        return self.data / "captions_edits.csv"

    # encode / train / report
    @property
    def cache(self) -> Path:
        return self.data / "cache"

    @property
    def encoded(self) -> Path:
        return self.data / "encoded.parquet"

    @property
    def prompts(self) -> Path:
        return self.data / "prompts.parquet"

    @property
    def sample_images(self) -> Path:
        return self.data / "sample_images.parquet"

    @property
    def lora(self) -> Path:
        return self.data / "lora"

    @property
    def samples(self) -> Path:
        return self.data / "samples"

    @property
    def report(self) -> Path:
        return self.data / "report"
