"""``vlp cache verify|gc``: check every entry of a cache store; list or delete unreferenced ones."""

from __future__ import annotations

import argparse

import polars as pl
from tqdm import tqdm

from pipeline.core.cli import CommandError, UsageError

DEFAULT_STORE = "data/cache"


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=DEFAULT_STORE, help=f"cache folder (default {DEFAULT_STORE}; see encode.cache_dir)")


def _existing(root: str):
    from pipeline.cache.store import CacheStore  # torch: imported when the command runs

    store = CacheStore(root)
    if not store.root.is_dir():
        raise CommandError(f"{store.root}: no such cache folder (see --store / encode.cache_dir)")
    return store


def verify(args) -> int:
    store = _existing(args.store)
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


def gc(args) -> int:
    store = _existing(args.store)
    try:
        keep = referenced_keys(args.keep)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    grace_s = args.grace * 3600
    garbage = store.unreferenced(keep, older_than_s=grace_s)
    size = 0
    for key in garbage:
        path = store.path(key)
        size += path.stat().st_size
        print(("deleted " if args.delete else "") + str(path))
        if args.delete:
            store.delete(key)
    if args.delete:
        for tmp in store.leftovers(older_than_s=grace_s):
            tmp.unlink(missing_ok=True)
    verb = "deleted" if args.delete else "unreferenced (run with --delete to remove)"
    print(f"{len(garbage)} entries, {size / 1e6:.1f} MB {verb}; {len(keep)} keys referenced")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache", help="the cache store: verify entries, gc unreferenced ones",
                       description="The content-addressed cache store: 'verify' reads every entry and names the bad "
                                   "ones; 'gc' lists (or deletes) entries no index refers to.")
    cs = p.add_subparsers(dest="cache_command", metavar="{verify,gc}", required=True)
    v = cs.add_parser("verify", help="read every entry; name the bad ones (exit 1 if any)",
                      description="Read every entry; name the bad ones (exit 1 if any).")
    _store_arg(v)
    v.add_argument("--delete-bad", action="store_true", help="remove the bad entries (the encode stage recomputes them)")
    v.set_defaults(run=verify)
    g = cs.add_parser("gc", help="list (or --delete) entries no index refers to",
                      description="List (or --delete) entries no index refers to.")
    _store_arg(g)
    g.add_argument("--keep", action="append", required=True, metavar="PARQUET",
                   help="an index whose *_key columns are kept (e.g. data/encoded.parquet); repeatable")
    g.add_argument("--delete", action="store_true", help="remove them (default: only list)")
    g.add_argument("--grace", type=float, default=1.0, metavar="HOURS",
                   help="leave entries and temporary files younger than this alone: another process may be encoding "
                        "into the store, its new entries not yet in its index (default 1; 0 = none)")
    g.set_defaults(run=gc)
