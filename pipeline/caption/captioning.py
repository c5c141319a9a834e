"""Caption every kept clip: reuse what is stored, run the VLM on the rest in batches, let human
edits win, and return the captions table and the run's throughput."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import polars as pl
from tqdm import tqdm

from pipeline.caption.backends.base import CaptionBackend, CaptionItem, CaptionOutput
from pipeline.caption.cleanup import CleanupConfig, apply_trigger, clean_caption
from pipeline.caption.media import FrameSampling, Media, MediaError, load_clip
from pipeline.caption.prompts import prompt_for, prompt_sha256
from pipeline.caption.store import CaptionStore
from pipeline.core import schemas
from pipeline.core.errors import one_line

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

log = logging.getLogger("caption")

# a clip is a span of its source: path (the source), the span and how it is resampled
NEEDED = ["clip_id", "kind", "path", "fps", "n_frames", "start_frame", "end_frame", "resampled", "source_frames"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunSettings:
    video_prompt: str
    image_prompt: str
    sampling: FrameSampling
    generation_key: dict  # GenerationParams.as_key() of the backend
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    batch_size: int = 4

    def prompt(self, kind: str) -> str:
        return prompt_for(kind, self.video_prompt, self.image_prompt)

    def sampling_json(self, kind: str) -> str:
        return json.dumps({**self.sampling.as_key(kind), **self.generation_key}, sort_keys=True, separators=(",", ":"))


@dataclass
class RunStats:
    clips: int = 0
    captioned: int = 0  # new VLM captions this run (status ok)
    reused: int = 0  # found in the store
    edited: int = 0  # human edits
    failed: int = 0  # caption_failed rows in the output
    vlm_clips: int = 0  # clips sent to the VLM this run
    new_tokens: int = 0
    vlm_seconds: float = 0.0  # wall time of the VLM loop (decoding media included)

    def metrics(self, model: str, backend: str, batch_size: int) -> dict:
        s = self.vlm_seconds
        return {
            "clips": self.clips, "captioned": self.captioned, "reused": self.reused, "edited": self.edited,
            "failed": self.failed, "vlm_clips": self.vlm_clips, "new_tokens": self.new_tokens,
            "vlm_seconds": round(s, 3),
            "clips_per_s": round(self.vlm_clips / s, 4) if s > 0 else 0.0,
            "tokens_per_s": round(self.new_tokens / s, 2) if s > 0 else 0.0,
            "model": model, "backend": backend, "batch_size": batch_size,
        }


def vlm_row(clip: dict, model: str, settings: RunSettings, out: CaptionOutput) -> dict:
    """The stored row for one VLM answer (or failure)."""
    kind = clip["kind"]
    caption, status, reason = "", "ok", ""
    if out.error:
        status, reason = "caption_failed", out.error
    else:
        caption = clean_caption(out.text, settings.cleanup)
        if not caption:
            status = "caption_failed"
            reason = "empty caption" + (f" after clean-up (raw: {out.text.strip()[:80]!r})" if out.text.strip() else "")
    return {
        "clip_id": clip["clip_id"], "kind": kind, "caption": caption, "raw": out.text, "model": model,
        "prompt_sha256": prompt_sha256(settings.prompt(kind)), "sampling": settings.sampling_json(kind),
        "source": "vlm", "status": status, "reason": reason, "new_tokens": int(out.new_tokens), "created_at": now_iso(),
    }


def edit_row(clip: dict, text: str, settings: RunSettings, created_at: str) -> dict:
    return {
        "clip_id": clip["clip_id"], "kind": clip["kind"], "caption": apply_trigger(text, settings.cleanup.trigger),
        "raw": text, "model": "human", "prompt_sha256": "", "sampling": "", "source": "edit", "status": "ok",
        "reason": "", "new_tokens": 0, "created_at": created_at,
    }


def reused_row(row: dict, settings: RunSettings) -> dict:
    """A stored caption, cleaned again with the current clean-up params (trigger word, length cap)."""
    caption = clean_caption(row["raw"], settings.cleanup)
    if caption:
        return {**row, "caption": caption}
    return {**row, "caption": "", "status": "caption_failed", "reason": "empty caption after clean-up"}


def _batches(clips: list[dict], size: int) -> list[list[dict]]:
    """Batches of one kind each (photos and videos never share a generate call)."""
    out = []
    for kind in ("video", "image"):
        same = [c for c in clips if c["kind"] == kind]
        out += [same[i : i + size] for i in range(0, len(same), size)]
    return out


def _load_batch(batch: list[dict], settings: RunSettings,
                root: str | os.PathLike = ".") -> list[tuple[dict, Media | MediaError]]:
    """Each clip with its media (read from its source, paths relative to ``root``), or with the
    MediaError that stopped it."""
    loaded: list[tuple[dict, Media | MediaError]] = []
    for clip in batch:
        media: Media | MediaError
        try:
            media = load_clip(clip, settings.sampling, root)
        except MediaError as exc:
            media = exc
        loaded.append((clip, media))
    return loaded


def generate_or_split(backend: CaptionBackend, items: list[CaptionItem]) -> list[CaptionOutput]:
    """``backend.generate``; a batch that fails (out of memory, say) is retried clip by clip, and
    a clip that fails alone becomes a failed result with the error, so the run goes on."""
    try:
        return backend.generate(items)
    except Exception as exc:  # noqa: BLE001
        if len(items) == 1:
            return [CaptionOutput(error=f"backend error: {one_line(exc)}")]
        log.warning("caption batch of %d failed (%s); captioning its clips one by one", len(items), one_line(exc))
        return [out for it in items for out in generate_or_split(backend, [it])]


def caption_loaded(backend: CaptionBackend, loaded: list[tuple[dict, Media | MediaError]],
                   settings: RunSettings) -> dict[str, CaptionOutput]:
    """clip_id -> the backend's answer (or the media error) for one batch of loaded clips."""
    ready = [(c, m) for c, m in loaded if not isinstance(m, MediaError)]
    outputs: dict[str, CaptionOutput] = {
        c["clip_id"]: CaptionOutput(error=str(m)) for c, m in loaded if isinstance(m, MediaError)
    }
    if ready:
        items = [CaptionItem(c["clip_id"], m, settings.prompt(c["kind"])) for c, m in ready]
        results = generate_or_split(backend, items)
        outputs.update({it.clip_id: r for it, r in zip(items, results)})
    return outputs


Answers = tuple[list[dict], dict[str, CaptionOutput]]  # a batch's clips and clip_id -> answer


def _local_answers(backend: CaptionBackend, batches: list[list[dict]], settings: RunSettings,
                   root: str | os.PathLike = ".") -> Iterator[Answers]:
    """Each batch captioned in turn here, the next batch's media read in a thread meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as loader:
        nxt: Future | None = loader.submit(_load_batch, batches[0], settings, root)
        for i in range(len(batches)):
            assert nxt is not None  # submitted for each batch up to the last
            loaded = nxt.result()
            nxt = loader.submit(_load_batch, batches[i + 1], settings, root) if i + 1 < len(batches) else None
            yield [c for c, _ in loaded], caption_loaded(backend, loaded, settings)


class CaptionWorker:
    """The backend of a Ray actor (built once, ``backend_factory()``) and what it does with a batch."""

    def __init__(self, backend_factory: Callable[[], CaptionBackend], settings: RunSettings, root: str = "."):
        self.backend, self.settings, self.root = backend_factory(), settings, root

    def __call__(self, batch: list[dict]) -> Answers:
        return batch, caption_loaded(self.backend, _load_batch(batch, self.settings, self.root), self.settings)


def caption_clips(
    dataset: pl.DataFrame,
    backend_factory,
    model_label: str,
    settings: RunSettings,
    store: CaptionStore,
    edits: dict[str, str],
    edits_created_at: str = "",
    backend_name: str = "transformers",
    ray: RayEngine | None = None,
    gpu: bool = False,
    root: str | os.PathLike = ".",
) -> tuple[pl.DataFrame, dict]:
    """Caption every row of ``dataset`` (the ``NEEDED`` columns: each clip a span of its source,
    ``path`` relative to ``root``).

    ``backend_factory()`` builds the backend only when some clip needs the VLM, so a run where
    every caption is stored or edited never loads a model. Results go to ``store`` as they come;
    an exception (or Ctrl-C) flushes what is done before it propagates. With ``ray``, the same
    batches are captioned by a Ray actor pool (each actor builds the backend once; one GPU each
    with ``gpu``) and the answers stored here as they come back.
    """
    missing = [c for c in NEEDED if c not in dataset.columns]
    if missing:
        raise schemas.SchemaError(f"caption input lacks column(s) {missing}")
    clips = dataset.select(NEEDED).to_dicts()
    stats = RunStats(clips=len(clips))
    final: dict[str, dict] = {}
    todo: list[dict] = []
    for clip in clips:
        cid = clip["clip_id"]
        if cid in edits:
            final[cid] = edit_row(clip, edits[cid], settings, edits_created_at or now_iso())
            stats.edited += 1
            continue
        kind = clip["kind"]
        key = (cid, model_label, prompt_sha256(settings.prompt(kind)), settings.sampling_json(kind))
        stored = store.get(key)
        if stored is not None and stored["status"] == "ok":
            final[cid] = reused_row(stored, settings)
            stats.reused += 1
        else:
            todo.append(clip)
    log.info(
        "%d clips: %d edited by hand, %d captions reused (same model, prompt and sampling), %d to caption",
        len(clips), stats.edited, stats.reused, len(todo),
    )
    if todo:
        batches = _batches(todo, settings.batch_size)
        answers: Iterator[Answers]
        if ray is None:
            backend = backend_factory()
            t0 = time.perf_counter()
            answers = _local_answers(backend, batches, settings, root)
        else:  # the actors build the backend: its loading counts in vlm_seconds
            t0 = time.perf_counter()
            answers = ray.map_actors(CaptionWorker, (backend_factory, settings, os.path.abspath(root)), batches,
                                     name="caption", gpu=gpu)
        try:
            with tqdm(total=len(todo), desc="caption", unit="clip") as bar:
                for batch, outputs in answers:
                    for clip in batch:
                        out = outputs[clip["clip_id"]]
                        if out.error:
                            log.warning("clip %s: caption failed: %s", clip["clip_id"], out.error)
                        row = vlm_row(clip, model_label, settings, out)
                        store.add(row)
                        final[clip["clip_id"]] = row
                        stats.vlm_clips += 1
                        stats.new_tokens += row["new_tokens"]
                    bar.update(len(batch))
        finally:
            getattr(answers, "close", lambda: None)()  # stop reading ahead (local) or the Ray actors
            store.flush()  # keep every caption finished before an error or Ctrl-C
            stats.vlm_seconds = time.perf_counter() - t0
    rows = [final[c["clip_id"]] for c in clips]
    stats.failed = sum(1 for r in rows if r["status"] != "ok")
    stats.captioned = sum(1 for c in todo if final[c["clip_id"]]["status"] == "ok")
    table = schemas.frame("captions", rows)
    metrics = stats.metrics(model_label, backend_name, settings.batch_size)
    log.info(
        "captioned %d, reused %d, edited %d, failed %d; VLM: %d clips in %.1f s = %.3f clips/s, %.1f new tokens/s",
        stats.captioned, stats.reused, stats.edited, stats.failed, stats.vlm_clips, stats.vlm_seconds,
        metrics["clips_per_s"], metrics["tokens_per_s"],
    )
    return table, metrics
