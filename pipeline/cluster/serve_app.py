"""``tansaku serve --ray``: the HTTP app on Ray Serve, fanning out to shard and reranker deployments.

What runs where::

    HTTP proxy (127.0.0.1 unless told) ─► Ingress: tansaku's FastAPI app (same routes, errors,
        API key, limits); analyses and encodes the query, merges the shards' answers
      ├─► ShardGroup deployments: each serves some shards (BM25, FAISS, corpus, filter masks),
      │   ``shard_replicas`` replicas each for read throughput
      └─► Reranker deployment: the cross-encoder, ``@serve.batch``-ed, autoscaled between
          ``reranker_min_replicas`` and ``reranker_max_replicas``, ``num_gpus`` per replica
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve

from tansaku.index.checks import check_int
from tansaku.index.errors import ConfigError
from tansaku.index.manifest import IndexManifest

from ..api import SearchConfig, Searcher
from ..serve.app import create_app
from .remote_index import RayShardedIndex, ShardGroups
from .reranker_server import RemoteReranker, RerankerReplica
from .shard_server import ShardGroup

APP_NAME = "tansaku"


@dataclass(frozen=True)
class RayServeConfig:
    """How the deployments are laid out and scaled.

    ``shards_per_group`` shards share one deployment (each with ``shard_replicas`` replicas);
    the reranker autoscales between ``reranker_min_replicas`` and ``reranker_max_replicas``
    aiming at ``target_ongoing_requests`` per replica, gathers up to ``max_batch_size``
    requests per model call (1: unbatched), and sheds load with a 503 once
    ``reranker_max_queued`` requests wait. ``ingress_replicas`` run the HTTP app (each
    searches one query at a time: its analyzer is not shared between threads).
    ``*_cpus``/``reranker_gpus``: Ray resources per replica (fractions let small machines
    host several replicas).
    """

    shards_per_group: int = 1
    shard_replicas: int = 1
    shard_cpus: float = 0.25
    reranker_min_replicas: int = 1
    reranker_max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.005
    reranker_max_queued: int = 64
    reranker_cpus: float = 0.5
    reranker_gpus: float = 0.0
    reranker_torch_threads: int | None = 1
    ingress_cpus: float = 0.25
    ingress_replicas: int = 1
    reranker_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "shards_per_group",
            "shard_replicas",
            "reranker_min_replicas",
            "max_batch_size",
            "ingress_replicas",
        ):
            check_int(name, getattr(self, name))
        check_int("reranker_max_queued", self.reranker_max_queued)
        if self.reranker_max_replicas < self.reranker_min_replicas:
            raise ConfigError("reranker_max_replicas must be at least reranker_min_replicas")


@serve.ingress()
class Ingress:
    """The Ray Serve deployment class of the ingress: tansaku's own FastAPI app."""

    async def __init__(self, *args: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        # ``args``: _ingress_app's. Opening waits on the other deployments: blocking calls, so
        # off the replica's event loop.
        self._app = await asyncio.to_thread(_ingress_app, *args)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app


def _ingress_app(
    index: str | None,
    groups: list[Any],
    per_group: int,
    reranker: Any,
    search: dict[str, Any],
    app_options: dict[str, Any],
) -> Any:
    """tansaku's FastAPI app over the remote shards and reranker."""
    remote = RemoteReranker(reranker) if reranker is not None else None
    searcher = None
    if index is not None:
        shards = ShardGroups(tuple(groups), per_group)
        searcher = Searcher(RayShardedIndex.connect(index, shards), SearchConfig(**search), reranker=remote)
    return create_app(searcher, remote, **app_options)


def build_application(
    index: str | Path | None,
    reranker: str | None,
    *,
    config: RayServeConfig = RayServeConfig(),
    search: dict[str, Any] | None = None,
    app_options: dict[str, Any] | None = None,
) -> Any:
    """The Ray Serve application serving ``index`` (sharded; None: rerank only) and ``reranker``.

    ``search``: :class:`~tansaku.pipeline.api.SearchConfig` fields; ``app_options``: keywords
    of :func:`~tansaku.pipeline.serve.create_app` (api_key, max_documents, model_name, ...).
    """
    if index is None and reranker is None:
        raise ConfigError("nothing to serve: give an index, a reranker or both")
    groups: list[Any] = []
    path = None
    if index is not None:
        path = str(Path(index).resolve())
        manifest = IndexManifest.load(Path(path))
        if manifest.shards is None:
            raise ConfigError(
                f"index {index} is not sharded: --ray serves sharded indexes (rebuild with --shards N)"
            )
        count = -(-len(manifest.shards) // config.shards_per_group)
        for group in range(count):
            deployment = serve.deployment(
                name=f"shards-{group:03d}",
                num_replicas=config.shard_replicas,
                ray_actor_options={"num_cpus": config.shard_cpus},
            )(ShardGroup)
            groups.append(deployment.bind(path, group, count, config.shards_per_group))
    ranker = None
    if reranker is not None:
        ranker = serve.deployment(
            name="reranker",
            # a batch fills only if a replica may hold that many requests (ray#43288)
            max_ongoing_requests=max(config.max_batch_size * 2, 4),
            max_queued_requests=config.reranker_max_queued,
            autoscaling_config={
                "min_replicas": config.reranker_min_replicas,
                "initial_replicas": config.reranker_min_replicas,
                "max_replicas": config.reranker_max_replicas,
                "target_ongoing_requests": config.target_ongoing_requests,
            },
            ray_actor_options={"num_cpus": config.reranker_cpus, "num_gpus": config.reranker_gpus},
        )(RerankerReplica).bind(
            reranker,
            dict(config.reranker_options),
            max_batch_size=config.max_batch_size,
            batch_wait_timeout_s=config.batch_wait_timeout_s,
            torch_threads=config.reranker_torch_threads,
        )
    options = dict(app_options or {})
    # The ingress's inference threads only wait on the reranker replicas: enough of them to
    # fill every replica's batches (one thread would send one request at a time).
    options.setdefault("worker_threads", max(4, 2 * config.max_batch_size * config.reranker_max_replicas))
    ingress = serve.deployment(
        name="ingress",
        num_replicas=config.ingress_replicas,
        ray_actor_options={"num_cpus": config.ingress_cpus},
    )(Ingress)
    return ingress.bind(
        path, groups, config.shards_per_group, ranker, dict(search or {}), dict(app_options or {})
    )


def run(
    index: str | Path | None,
    reranker: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    config: RayServeConfig = RayServeConfig(),
    search: dict[str, Any] | None = None,
    app_options: dict[str, Any] | None = None,
    blocking: bool = False,
) -> Any:
    """Deploy the application on the connected Ray cluster, HTTP on ``host:port``; returns the
    ingress handle (``blocking``: serve until interrupted)."""
    serve.start(http_options={"host": host, "port": port})
    app = build_application(index, reranker, config=config, search=search, app_options=app_options)
    return serve.run(app, name=APP_NAME, route_prefix="/", blocking=blocking)
