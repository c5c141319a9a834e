"""The parquet tables every stage shares: column names and dtypes, in one place.

Every table a stage writes goes through :func:`write_table`, which checks the frame
against its schema here (same columns, same order, same dtypes) before writing it
atomically. Readers use :func:`read_table`, which checks again, so a stale or
hand-edited table fails loudly with the file and the offending column named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from pipeline.core.fs import SAFE_ID

if TYPE_CHECKING:
    # a table's columns and their dtypes (a dtype class such as pl.String, or an instance such as pl.List(I64))
    ColumnTypes = dict[str, pl.DataType | type[pl.DataType]]

Str = pl.String
I32 = pl.Int32
I64 = pl.Int64
F64 = pl.Float64
Bool = pl.Boolean

# data/sources.parquet — one row per file under data/raw (probe stage).
SOURCES: ColumnTypes = {
    "source_id": Str,  # sha256 of the file's bytes
    "path": Str,  # path relative to the raw folder, forward slashes
    "kind": Str,  # "video" or "image"
    "size_bytes": I64,
    "container": Str,  # demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    "codec": Str,  # video codec name, e.g. "h264"
    "width": I32,  # coded width (before rotation)
    "height": I32,
    "rotation": I32,  # display rotation in degrees clockwise (0, 90, 180, 270)
    "fps": F64,  # average frame rate
    "vfr": Bool,  # variable frame rate (frame durations differ)
    "n_frames": I64,
    "duration_s": F64,
    "has_audio": Bool,
    "status": Str,  # "ok" or "rejected"
    "reason": Str,  # empty when ok; one line when rejected
    # the source's record (data/raw/sources.yaml or a <file>.yaml sidecar; pipeline/curate/probe/records.py)
    "owner": Str,  # who owns the file ("" when no record says)
    "licence": Str,  # SPDX id or free text ("" when no record says)
    "consent": Str,  # whether the people in it agreed: "yes", "no", "unknown" (also: no record) or "withdrawn"
    "subject": Str,  # who appears in it
    "notes": Str,
    "withdrawn_on": Str,  # ISO date of a withdrawal ("" unless withdrawn)
    "withdrawn_reason": Str,
    "record": Str,  # where the record came from, e.g. "sources.yaml:12, alice.mp4.yaml:1" ("" = no record)
}

# data/clips.parquet — one row per clip: a span of its source (split stage). No clip file is needed:
# every stage reads the span's frames from the source (pipeline.core.clip.ClipSpan).
CLIPS: ColumnTypes = {
    "clip_id": Str,  # hash of source_id, span and every param that changes the pixels
    "source_id": Str,  # sha256 of the source file's bytes: a changed source gives new clips
    "source_path": Str,  # source path relative to the raw folder
    "kind": Str,  # "video" or "image"
    "scene_index": I32,  # index of the detected scene the clip came from
    "start_frame": I64,  # in source frames (presentation order), inclusive
    "end_frame": I64,  # in source frames, exclusive
    "start_s": F64,
    "end_s": F64,
    "n_frames": I64,  # frames of the clip (after resampling)
    "fps": F64,  # frame rate of the clip: split.fps when resampled, else the source's
    "resampled": Bool,  # True when the clip is resampled to split.fps (frame k: the source frame on screen at start_s + k / fps)
    "rotation_applied": I32,  # degrees the source's frames are turned to be upright
    "width": I32,  # of the upright frames
    "height": I32,
    "path": Str,  # the file the frames are read from (the source), relative to the repository root
    "source_frames": I64,  # frames the source had when split: a reader finding another count fails loudly
    "sha256": Str,  # content address of the clip's frames: sha256 of the source's sha256, span, fps rule, rotation
    "clip_file": Str,  # a clip file written from the span (split.write_clips), relative to the repository root; "" when none
    "status": Str,  # "ok", "error" (the clip failed) or "skipped" (the source gave no clip: reason says why)
    "reason": Str,
    "note": Str,  # what was done to make an ok clip usable
}

# data/clips/.measure/<source_id>-<key>.parquet — the per-frame measurements of one source, made in
# the split stage's one decode of it (pipeline.curate.measure), one row per sampled frame (every
# ``round(fps / score.sample_fps)``-th frame of the source); the score stage aggregates them per clip.
F32 = pl.Float32
MEASURES: ColumnTypes = {
    "frame": I64,  # source frame index (presentation order)
    "time": F64,  # its presentation time, seconds after the first frame
    "luma_mean": F64,  # 0..255, of the frame scaled to score.short_side
    "luma_std": F64,
    "lit_share": F64,  # share of pixels brighter than score.black_level
    "dim_share": F64,  # share of pixels darker than score.white_level
    "sharpness": F64,  # variance of the Laplacian
    "row_lit": pl.List(F32),  # per row (top to bottom): share of its pixels brighter than score.black_level
    "col_lit": pl.List(F32),  # per column (left to right)
    "phash": Str,  # 64-bit perceptual hash, hex
    "motion": F64,  # optical flow from the previous sampled frame to this one, frame diagonals per second; null for the first
    "face_confidence": pl.List(F64),  # every face MTCNN found (score.face_fps frames a second); null: not looked at
    "face_area": pl.List(F64),  # each face's box as a share of the frame's area
}

# data/scores.parquet — one row per clip (score stage).
SCORES: ColumnTypes = {
    "clip_id": Str,
    "kind": Str,
    "duration_s": F64,
    "width": I32,
    "height": I32,
    "n_sampled": I32,  # sampled frames of the span the scores aggregate (measured in the split stage's one decode)
    "motion": F64,  # mean optical-flow magnitude / frame diagonal
    "static_fraction": F64,  # fraction of near-static frame pairs
    "sharpness": F64,  # median variance of the Laplacian
    "luma_mean": F64,  # 0..255
    "luma_std": F64,
    "black_fraction": F64,  # fraction of near-black frames
    "white_fraction": F64,
    "border_top": F64,  # uniform dark bar height / width, as a fraction of the frame side
    "border_bottom": F64,
    "border_left": F64,
    "border_right": F64,
    "phash": Str,  # 64-bit perceptual hash of the middle frame, hex
    "face_share": F64,  # share of the frames looked at (score.face_fps of them a second) with a face; null: not looked (score.faces false)
    "face_area": F64,  # largest face's box as a share of the frame's area (0 when none)
    "face": Bool,  # the clip shows a face: face_share >= score.face_min_share
    "status": Str,  # "ok" or "error"
    "reason": Str,
}

# data/dataset.parquet (kept clips) — clips columns + scores columns + the source's licence and consent (filter stage).
DATASET: ColumnTypes = {
    **CLIPS,
    **{k: v for k, v in SCORES.items() if k not in CLIPS and k not in ("status", "reason")},
    "licence": Str,  # the source's, as sources.parquet said when the filter ran
    "consent": Str,
}

# data/rejected.parquet — clips that did not pass, with every reason (filter stage).
REJECTED: ColumnTypes = {
    **DATASET,
    "reasons": pl.List(Str),
}

# data/captions.parquet — one row per kept clip (caption stage).
CAPTIONS: ColumnTypes = {
    "clip_id": Str,
    "kind": Str,  # "video" or "image"
    "caption": Str,  # final text fed to the text encoder (cleaned, trigger word applied); "" when failed
    "raw": Str,  # the VLM's answer before clean-up (the edit's text for source "edit")
    "model": Str,  # hub id or local path + "@" + fingerprint of config/weights ("human" for edits)
    "prompt_sha256": Str,  # of the prompt sent (video or image prompt); "" for edits
    "sampling": Str,  # JSON of the frame sampling and generation params; "" for edits
    "source": Str,  # "vlm" or "edit"
    "status": Str,  # "ok" or "caption_failed" (failed rows are retried and never trained on)
    "reason": Str,  # one line when caption_failed
    "new_tokens": I64,  # tokens the VLM generated for this caption (0 for edits)
    "created_at": Str,  # ISO 8601 UTC, when the caption (or the edits file) was written
}

# data/encoded.parquet — one row per training sample (a window of a clip) (encode stage).
ENCODED: ColumnTypes = {
    "sample_id": Str,  # clip_id + "#" + window index
    "clip_id": Str,
    "kind": Str,  # "video" or "image"
    "window": I32,  # index of the window within the clip (chunk mode gives several)
    "frame_indices": pl.List(I64),  # clip frame indices that were encoded
    "bucket_frames": I32,
    "bucket_height": I32,
    "bucket_width": I32,
    "latent_key": Str,
    "text_key": Str,
    "cond_key": Str,  # I2V: first-frame conditioning latents entry; "" when the family needs none
    "image_key": Str,  # Wan 2.1 I2V: CLIP vision embedding entry of the first frame; "" otherwise
    "latent_shape": pl.List(I64),  # [C, F, H, W]
    "text_shape": pl.List(I64),  # [L, D]
    "dtype": Str,  # "bfloat16" / "float16" / "float32"
    "family": Str,  # model family, e.g. "wan2.1-t2v"
    "vae": Str,  # VAE id + fingerprint
    "text_encoder": Str,  # text encoder id + fingerprint
    "caption": Str,  # caption text that was encoded
}

# data/lora/<run>/manifest.parquet — every sample a LoRA was trained on (train stage).
MANIFEST: ColumnTypes = {
    "sample_id": Str,
    "clip_id": Str,
    "source_id": Str,
    "source_path": Str,
    "kind": Str,
    "start_frame": I64,  # source span of the clip
    "end_frame": I64,
    "start_s": F64,
    "end_s": F64,
    "frame_indices": pl.List(I64),
    "caption": Str,
    "caption_source": Str,
    "latent_key": Str,
    "text_key": Str,
    "bucket_frames": I32,
    "bucket_height": I32,
    "bucket_width": I32,
    "times_seen": I64,  # times in a training batch (summed over the experts of a two-expert run)
    "held_out": Bool,
    "family": Str,  # model family the LoRA(s) were trained for, e.g. "wan2.2-t2v-a14b"
    "expert": Str,  # Wan 2.2 A14B: "high", "low" or "high+low" (both LoRA files); "" for single-expert families
    "licence": Str,  # the clip's source's licence and consent when the LoRA was trained (dataset.parquet)
    "consent": Str,
    "face_share": F64,  # share of the clip's frames with a face (score stage; null: not measured)
    "face": Bool,  # the clip shows a face
}

# data/prompts.parquet — prompt embeddings the encode stage caches beside the captions' (encode stage):
# the empty prompt (caption dropout, the negative prompt of sample videos) and train.samples' prompts.
PROMPTS: ColumnTypes = {
    "prompt": Str,  # as written in params ("" for the empty prompt)
    "role": Str,  # "empty" | "sample"
    "text_key": Str,
    "text_shape": pl.List(I64),
    "text_encoder": Str,
}

# data/sample_images.parquet — the conditioning of train.samples' images (encode stage), for image-to-video
# families (and Wan 2.2 TI2V-5B samples that give an image): what the diffusers pipeline's VAE (and CLIP)
# would make of the image at the sample size, cached so training never loads them.
SAMPLE_IMAGES: ColumnTypes = {
    "image": Str,  # the path as written in train.samples
    "sha256": Str,  # of the image file's bytes
    "width": I64,  # the image's own size
    "height": I64,
    "bucket": pl.List(I64),  # [frames, height, width] of the samples it conditions (train.sample_*)
    "condition": Str,  # "i2v-first-frame" (cache entry cond_latents) | "ti2v-first-latent" (entry latents)
    "cond_key": Str,
    "image_key": Str,  # Wan 2.1 I2V: the CLIP embedding (entry image_embeds); "" otherwise
    "vae": Str,
}

TABLES: dict[str, ColumnTypes] = {
    "caption_parts": CAPTIONS,  # the caption store's chunks: one row per clip and model / prompt / sampling
    "sources": SOURCES,
    "clips": CLIPS,
    "measures": MEASURES,
    "scores": SCORES,
    "dataset": DATASET,
    "rejected": REJECTED,
    "captions": CAPTIONS,
    "encoded": ENCODED,
    "manifest": MANIFEST,
    "prompts": PROMPTS,
    "sample_images": SAMPLE_IMAGES,
}


# The column that names a row: unique in every table (a duplicate would multiply rows through
# every join downstream, e.g. one clip trained several times).
KEYS: dict[str, str] = {
    "sources": "path",
    "clips": "clip_id",
    "measures": "frame",
    "scores": "clip_id",
    "dataset": "clip_id",
    "rejected": "clip_id",
    "captions": "clip_id",
    "encoded": "sample_id",
    "manifest": "sample_id",
    "prompts": "prompt",
    "sample_images": "image",
}


class SchemaError(ValueError):
    """A table does not match its schema."""


def empty(name: str) -> pl.DataFrame:
    """An empty frame with the table's schema."""
    return pl.DataFrame(schema=TABLES[name])


def frame(name: str, rows: list[dict]) -> pl.DataFrame:
    """Build a table from row dicts; missing columns are an error, extra keys are ignored."""
    schema = TABLES[name]
    if not rows:
        return empty(name)
    for i, row in enumerate(rows):
        missing = [c for c in schema if c not in row]
        if missing:
            raise SchemaError(f"{name}: row {i} lacks column(s) {missing}")
    data = {c: [row[c] for row in rows] for c in schema}
    return pl.DataFrame(data, schema=schema)


def conform(df: pl.DataFrame, name: str) -> pl.DataFrame:
    """Select the table's columns in order and cast them; missing columns are an error."""
    schema = TABLES[name]
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise SchemaError(f"{name}: missing column(s) {missing}")
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])


def validate(df: pl.DataFrame, name: str, where: str = "") -> pl.DataFrame:
    """Check that ``df`` has exactly the table's columns, in order, with its dtypes."""
    schema = TABLES[name]
    label = f"{where or name}"
    if list(df.columns) != list(schema):
        missing = [c for c in schema if c not in df.columns]
        extra = [c for c in df.columns if c not in schema]
        raise SchemaError(
            f"{label}: columns do not match the '{name}' schema"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
            + ("; wrong order" if not missing and not extra else "")
        )
    for col, dtype in schema.items():
        if df.schema[col] != dtype:
            raise SchemaError(f"{label}: column '{col}' is {df.schema[col]}, schema says {dtype}")
    check_unique(df, name, label)
    check_ids(df, label)
    return df


def check_ids(df: pl.DataFrame, where: str) -> None:
    """Clip ids become file names (thumbnails, exports): every one must be a safe name (``pipeline.core.fs.SAFE_ID``)."""
    if "clip_id" not in df.columns or df.height == 0:
        return
    bad = df.filter(~pl.col("clip_id").str.contains(SAFE_ID.pattern))["clip_id"].unique().to_list()
    if bad:
        raise SchemaError(f"{where}: clip id(s) {bad[:3]!r} are not valid ids (letters, digits, '_' and '-' only)")


def check_unique(df: pl.DataFrame, name: str, where: str = "") -> None:
    """Fail loudly when the table's key column (``KEYS``) repeats a value."""
    key = KEYS.get(name)
    if key is None or df.height == 0:
        return
    dup = df.filter(pl.col(key).is_duplicated())[key].unique().sort().to_list()
    if dup:
        shown = ", ".join(map(str, dup[:5])) + (f" and {len(dup) - 5} more" if len(dup) > 5 else "")
        raise SchemaError(f"{where or name}: key column '{key}' is not unique: {shown} repeated")


def write_table(df: pl.DataFrame, path: str | os.PathLike, name: str) -> Path:
    """Validate ``df`` against schema ``name`` and write it to ``path`` atomically."""
    from pipeline.core.fs import atomic_path

    path = Path(path)
    validate(df, name, where=str(path))
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return path


def read_table(path: str | os.PathLike, name: str) -> pl.DataFrame:
    """Read a parquet table and check it against schema ``name``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: table '{name}' not found (run the stage that writes it)")
    return validate(pl.read_parquet(path), name, where=str(path))
