"""Where the data stages run: ``engine: local | ray`` and the ``ray`` group of ``params.yaml``.

``local`` (the default) runs split and score in a process pool of this machine and caption and
encode with one model in this process. ``ray`` runs the same per-item functions on a Ray cluster
(``pipeline.core.ray_engine``): split (per source) and score (per clip) as Ray Data CPU tasks,
caption and encode (per batch of clips) as Ray Data actor pools, one actor per GPU, each loading
its model once. Either way the driver (this process) works out what is left to do exactly as the
local engine does, persists results as they come back and writes the same tables, so a later
stage, ``dvc repro`` and a re-run after a kill cannot tell which engine ran.

A stage runner opens the engine with :func:`stage_engine`; ``None`` is the local engine, else a
:class:`~pipeline.core.ray_engine.RayEngine` to pass to the stage's logic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.config import coerce, load_settings, setting

if TYPE_CHECKING:
    from pipeline.core.ray_engine import RayEngine

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class RayConfig:
    """The ``ray`` group (used with ``engine: ray`` only)."""

    address: str | None = None  # None: a local Ray instance for the run ($RAY_ADDRESS when set); "auto" or host:port: join
    num_cpus: int | None = setting(None, min=1)  # CPUs of a local instance; None = all
    num_gpus: int | None = setting(None, min=0)  # GPUs of a local instance; None = all detected
    task_cpus: float = setting(1.0, above=0)  # CPUs each split/score task reserves
    items_per_task: int = setting(1, min=1)  # sources (split) or clips (score) one Ray task takes
    actors: int | None = setting(None, min=1)  # caption/encode actors; None = one per GPU of the cluster (1 without GPUs)
    actor_cpus: float = setting(1.0, above=0)  # CPUs each caption/encode actor reserves
    progress_bars: bool = True  # Ray Data's progress bars


@dataclass(frozen=True)
class EngineConfig:
    engine: str = setting("local", choices=ENGINES)
    ray: RayConfig = field(default_factory=RayConfig)

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> EngineConfig:
        """The top-level ``engine`` key and the ``ray`` group of the whole params file."""
        params = params or {}
        meta = {"choices": ENGINES}
        name = coerce(params.get("engine") or "local", str, "engine", meta)
        return cls(engine=name, ray=load_settings(RayConfig, params.get("ray"), "ray"))


@contextmanager
def stage_engine(params: dict[str, Any] | None, stage: str) -> Iterator[RayEngine | None]:
    """The engine of ``stage`` for the run: ``None`` (local), or a connected :class:`RayEngine`
    (Ray started or joined here, shut down or left at the end). Logs which engine runs."""
    cfg = EngineConfig.from_params(params)
    log = logging.getLogger(stage)
    if cfg.engine == "local":
        log.info("engine: local")
        yield None
        return
    from pipeline.core.ray_engine import ray_session

    with ray_session(cfg.ray) as engine:
        log.info("engine: ray (%s)", engine.describe())
        yield engine
