"""``vlp cache verify|gc``: check every entry of a cache store; list or delete unreferenced ones."""

from __future__ import annotations

import argparse
import sys

import polars as pl
from tqdm import tqdm

from pipeline.cache import CacheStore

DEFAULT_STORE = "data/cache"


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=DEFAULT_STORE, help=f"cache folder (default {DEFAULT_STORE}; see encode.cache_dir)")


def verify_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vlp cache verify", description="Read every entry; name the bad ones (exit 1 if any).")
    _store_arg(p)
    p.add_argument("--delete-bad", action="store_true", help="remove the bad entries (the encode stage recomputes them)")
    args = p.parse_args(argv)
    store = CacheStore(args.store)
    if not store.root.is_dir():
        print(f"vlp cache verify: {store.root}: no such cache folder (see --store / encode.cache_dir)", file=sys.stderr)
        return 1
    keys = list(store.keys())
    bad = 0
    kinds: dict[str, int] = {}
    for key, problem in tqdm(store.verify(keys), total=len(keys), desc="verify", unit="entry", disable=None):
        if not problem:
            kind = store.metadata(key).get("kind") or "other"  # latent, text, cond (I2V), image (CLIP)
            kinds[kind] = kinds.get(kind, 0) + 1
        if problem:
            bad += 1
            print(f"BAD {store.path(key)}: {problem}" + (" (deleted)" if args.delete_bad else ""))
            if args.delete_bad:
                store.delete(key)
    for tmp in store.leftovers():
        print(f"note: leftover temporary file {tmp} (from a killed writer; `vlp cache gc --delete` removes it)")
    sound = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"{len(keys)} entries, {bad} bad" + (f" (sound: {sound})" if sound else ""))
    return 1 if bad else 0


def referenced_keys(paths: list[str]) -> set[str]:
    """Every value of the ``*_key`` columns of the given parquet indexes."""
    keys: set[str] = set()
    for path in paths:
        df = pl.read_parquet(path)
        cols = [c for c in df.columns if c.endswith("_key")]
        if not cols:
            raise ValueError(f"{path}: no *_key columns (not an index of the cache)")
        for c in cols:
            keys.update(k for k in df[c].to_list() if k)
    return keys


def gc_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vlp cache gc", description="List (or --delete) entries no index refers to.")
    _store_arg(p)
    p.add_argument("--keep", action="append", required=True, metavar="PARQUET",
                   help="an index whose *_key columns are kept (e.g. data/encoded.parquet); repeatable")
    p.add_argument("--delete", action="store_true", help="remove them (default: only list)")
    args = p.parse_args(argv)
    store = CacheStore(args.store)
    try:
        keep = referenced_keys(args.keep)
    except (OSError, ValueError) as e:
        print(f"vlp cache gc: {e}", file=sys.stderr)
        return 2
    garbage = store.unreferenced(keep)
    size = 0
    for key in garbage:
        path = store.path(key)
        size += path.stat().st_size
        print(("deleted " if args.delete else "") + str(path))
        if args.delete:
            store.delete(key)
    if args.delete:
        for tmp in store.leftovers():
            tmp.unlink(missing_ok=True)
    verb = "deleted" if args.delete else "unreferenced (run with --delete to remove)"
    print(f"{len(garbage)} entries, {size / 1e6:.1f} MB {verb}; {len(keep)} keys referenced")
    return 0


def main(argv: list[str]) -> int:
    commands = {"verify": verify_main, "gc": gc_main}
    if not argv or argv[0] not in commands:
        print("usage: vlp cache {verify,gc} [--store DIR] ...\n"
              "  verify                     read every entry; name bad ones (exit 1 if any)\n"
              "  gc --keep INDEX [--delete] list (or delete) entries no index refers to", file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])
