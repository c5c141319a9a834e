"""The Ray engine: a stage's own per-item function mapped over Ray Data, results streamed back.

Nothing here knows a stage. :meth:`RayEngine.map_items` runs ``fn(item)`` for each item as Ray Data
CPU tasks (split: one source; score: one clip); :meth:`RayEngine.map_actors` builds ``cls(*args)``
once per actor of a Ray Data actor pool (one per GPU: the model loads once) and calls it on each item
(caption, encode: one batch of clips). Items and results are small rows (ids, paths, keys, scores,
captions), pickled into one binary column; big arrays never travel through the object store:
workers read clip files and write clip files and cache entries to storage every node sees. Results
come back as they finish (any order) through ``iter_rows``, so the driver persists as it goes.

Every task and actor first changes to the driver's working directory, so the relative paths in the
tables (``data/clips/...``) mean the same on every node: the project folder (with ``data/`` and the
cache) must be at the same path on every node, on shared storage. Ray itself is imported only here
and only when the engine runs, so the local engine needs no Ray (``pip install -e '.[cluster]'``).

Losing a worker does not lose work: Ray Data retries a lost task and restarts a lost actor, and the
item is computed again; killing the driver stops the job, and the re-run skips what was persisted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.core.engine import RayConfig
from pipeline.core.errors import one_line

# environment variables the driver hands to every worker (where models and caches are, offline mode)
ENV_PREFIXES = ("VLP_", "HF_", "TRANSFORMERS_", "DVC_NO_ANALYTICS")


def _dumps(obj: Any) -> bytes:
    from ray import cloudpickle

    return cloudpickle.dumps(obj)


def _loads(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


def _enter(cwd: str) -> None:
    if os.getcwd() != cwd:
        os.chdir(cwd)


def _task_fn(fn: Callable[[Any], Any], cwd: str, name: str) -> Callable[[dict], dict]:
    """The Ray Data batch function of ``fn`` (named ``name`` in Ray's progress bars)."""

    def run(batch: dict) -> dict:
        _enter(cwd)
        return {"result": [_dumps(fn(_loads(bytes(b)))) for b in batch["item"]]}

    run.__name__ = run.__qualname__ = name
    return run


class _Actor:
    """One actor of a pool: builds the stage's worker object once, then calls it on each item."""

    def __init__(self, cls: Callable[..., Callable[[Any], Any]], args: tuple, cwd: str):
        self.cwd = cwd
        _enter(cwd)
        self.worker = cls(*args)

    def __call__(self, batch: dict) -> dict:
        _enter(self.cwd)
        return {"result": [_dumps(self.worker(_loads(bytes(b)))) for b in batch["item"]]}


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


class RayEngine:
    """A connected Ray driver: maps stage functions over items on the cluster."""

    def __init__(self, cfg: RayConfig, cwd: str | None = None):
        self.cfg = cfg
        self.cwd = cwd or os.getcwd()

    def resources(self) -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources())

    @property
    def gpus(self) -> int:
        return int(self.resources().get("GPU", 0))

    def describe(self) -> str:
        import ray

        res = self.resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; working directory {self.cwd}"

    def wants_gpu(self, device: str | None) -> bool:
        """Whether actors for a stage's ``device`` setting hold a GPU: ``cpu`` never, ``auto`` when the
        cluster has GPUs, a ``cuda`` device always (each actor sees its own GPU as ``cuda``)."""
        device = (device or "auto").lower()
        if device == "cpu":
            return False
        return self.gpus > 0 if device == "auto" else True

    def actor_count(self, gpu: bool) -> int:
        """Actors of a pool: ``ray.actors``, else one per GPU of the cluster (``gpu``), else one."""
        if self.cfg.actors:
            return self.cfg.actors
        return max(1, self.gpus) if gpu else 1

    def _dataset(self, items: list, per_block: int):
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = self.cfg.progress_bars
        # one map operator only: Ray Data's per-operator reservation (half the CPUs held back for the
        # other operators) would leave cores idle, e.g. one split task at a time on two cores
        ctx.op_resource_reservation_enabled = False
        rows = [{"item": _dumps(it)} for it in items]
        return ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_block)))

    def _stream(self, ds, name: str) -> Iterator[Any]:
        try:
            for row in ds.iter_rows():
                yield _loads(row["result"])
        except Exception as exc:
            raise RuntimeError(f"{name} on Ray failed: {one_line(exc)}") from exc

    def map_items(self, fn: Callable[[Any], Any], items: Iterable[Any], *, name: str) -> Iterator[Any]:
        """``fn(item)`` for every item, as Ray Data CPU tasks (``ray.task_cpus`` each, ``ray.items_per_task``
        items per task); yields the results as they finish, in any order."""
        items = list(items)
        if not items:
            return iter(())
        ds = self._dataset(items, self.cfg.items_per_task).map_batches(
            _task_fn(fn, self.cwd, name), batch_size=1, num_cpus=self.cfg.task_cpus,
        )
        return self._stream(ds, name)

    def map_actors(self, cls: Callable[..., Callable[[Any], Any]], args: tuple, items: Iterable[Any], *, name: str,
                   gpu: bool) -> Iterator[Any]:
        """``cls(*args)`` built once in each actor of a pool (one per GPU with ``gpu``, each holding one),
        then called on every item; yields the results as they finish, in any order."""
        import ray.data

        items = list(items)
        if not items:
            return iter(())
        if gpu and not self.gpus:
            raise RuntimeError(f"{name}: the device is a GPU but the Ray cluster has none (set the stage's device "
                               "to cpu or auto, or add GPU nodes)")
        actor = type(name, (_Actor,), {})
        n = self.actor_count(gpu)
        ds = self._dataset(items, 1).map_batches(
            actor, fn_constructor_args=(cls, args, self.cwd), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(n, len(items))),
            num_gpus=1 if gpu else 0, num_cpus=self.cfg.actor_cpus,
        )
        return self._stream(ds, name)


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[RayEngine]:
    """Ray connected for a stage: a Ray already initialised in this process is used as it is (and
    left running); else ``ray.address`` is started (None: a local instance, or ``$RAY_ADDRESS`` when set)
    or joined, and shut down (the driver disconnected; a local instance stopped) at the end."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("engine: ray needs Ray Data: pip install -e '.[cluster]' (or set engine: local)") from None
    started = False
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": worker_env()}, "include_dashboard": False}
        if address == "local":
            kwargs.update(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:
            raise RuntimeError(f"ray.address {address}: cannot start or join Ray: {one_line(exc)}") from exc
        started = True
    try:
        yield RayEngine(cfg)
    finally:
        if started:
            ray.shutdown()
