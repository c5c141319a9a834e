"""Prompt embeddings that are not a clip's caption: the empty prompt (what a caption-dropout step
trains on, and the negative prompt of sample videos) and the prompts of ``train.samples``. They
go into the same content-addressed cache as the captions' (same key function: a prompt and a
caption with the same text share one entry), so training never loads the text encoder."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from pipeline.core import schemas
from pipeline.core.devices import dtype_name
from pipeline.encode.encoder import Encoder
from pipeline.encode.keys import text_key

EMPTY = ""


@dataclass
class PromptJob:
    """One prompt to embed (the fields ``Encoder.encode_texts`` reads)."""

    prompt: str
    role: str
    text_key: str = ""

    @property
    def caption(self) -> str:
        return self.prompt

    @property
    def clip_id(self) -> str:  # named in the encoder's messages
        return f"{self.role} prompt {self.prompt[:40]!r}"


def prompt_jobs(sample_prompts: list[str]) -> list[PromptJob]:
    """The empty prompt, then each distinct sample prompt (in order)."""
    jobs, seen = [PromptJob(EMPTY, "empty")], {EMPTY}
    for p in sample_prompts:
        if p not in seen:
            seen.add(p)
            jobs.append(PromptJob(p, "sample"))
    return jobs


def encode_prompts_table(enc: Encoder, sample_prompts: list[str]) -> tuple[pl.DataFrame, int]:
    """Cache what is missing of the prompts' embeddings; the ``prompts`` table and how many were computed.
    A prompt whose embedding has NaN or Inf values is an error (a params problem, not a clip's)."""
    from pipeline.models.text_encoder import clean_prompt

    jobs = prompt_jobs(sample_prompts)
    for j in jobs:
        j.text_key = text_key(caption=clean_prompt(j.prompt), text_fingerprint=enc.text_fp, max_length=enc.max_len,
                              dtype=enc.cfg.dtype, compute_dtype=dtype_name(enc.compute_dtype))
    missing = [j for j in jobs if not enc._reusable(j.text_key)]
    computed = 0
    if missing:
        computed, bad = enc.encode_texts(missing)
        if bad:
            raise ValueError(f"the embedding of prompt(s) {[j.prompt for j in missing if j.text_key in bad]} has NaN or Inf values")
    rows = [{"prompt": j.prompt, "role": j.role, "text_key": j.text_key,
             "text_shape": [int(x) for x in json.loads(enc.store.metadata(j.text_key)["shape"])],
             "text_encoder": enc.text_id} for j in jobs]
    return schemas.frame("prompts", rows), computed
