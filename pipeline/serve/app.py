"""The application factory: :func:`create_app` wires state, guards, error handlers and routes."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import Response

from tansaku import __version__
from tansaku.index.errors import ConfigError

from .docs_assets import offline_docs_app
from .errors import add_error_handlers
from .guards import GuardMiddleware
from .hosts import AllowedHosts, HostGuardMiddleware
from .limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DOCUMENTS,
    DEFAULT_MAX_PAIRS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TOKENS,
    DEFAULT_REQUEST_TIMEOUT,
    check_positive_ints,
    check_positive_numbers,
)
from .metrics import MetricsMiddleware, ServerMetrics
from .routes import add_routes, current_index
from .service import InferenceQueue, RerankService
from .state import ServerState
from .work_limits import WorkLimits

if TYPE_CHECKING:
    from tansaku.pipeline.api import Searcher
    from tansaku.rerank.base import Reranker


def create_app(
    searcher: Searcher | None,
    reranker: Reranker | None,
    *,
    api_key: str | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    model_name: str | None = None,
    worker_threads: int = 1,
    max_queue: int = DEFAULT_MAX_QUEUE,
    strict_model_name: bool = False,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    allowed_hosts: Iterable[str] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``searcher`` (may be None: rerank only) and ``reranker``.

    ``api_key`` enables Bearer authentication (``/health`` and the docs stay open);
    ``model_name`` is the name clients use in ``model`` (default: the reranker's hub id, or
    its directory's name). ``worker_threads`` model calls run at once; up to ``max_queue``
    more wait, beyond that requests get a 503; one not answered ``request_timeout`` seconds
    after it joined that queue gets a 504 (None: no limit). ``max_pairs`` and ``max_tokens``
    cap the work of one request (413 beyond; see :mod:`.work_limits`). ``allowed_hosts``:
    ``Host`` names answered besides IP addresses and localhost (``"*"``: any; see :mod:`.hosts`).
    Any ``model`` name is accepted (the answer names the model served) unless
    ``strict_model_name``. ``GET /metrics`` serves Prometheus metrics from a registry of this
    app's own.
    """
    check_positive_ints(
        {
            "max_documents": max_documents,
            "max_body_bytes": max_body_bytes,
            "worker_threads": worker_threads,
            "max_queue": max_queue,
        }
    )
    check_positive_numbers({"request_timeout": request_timeout})
    if searcher is None and reranker is None:
        raise ConfigError("nothing to serve: give an index, a reranker or both")
    metrics = ServerMetrics()
    queue = InferenceQueue(worker_threads, max_queue, request_timeout)
    service = None
    if reranker:
        service = RerankService(
            reranker, model_name, strict_model_name=strict_model_name, on_scored=metrics.observe_rerank
        )
    state = ServerState(
        searcher,
        service,
        queue,
        max_documents,
        api_key or None,
        metrics=metrics,
        work=WorkLimits(max_pairs, max_tokens),
    )
    metrics.watch_queue(lambda: queue.in_flight, worker_threads)
    if searcher is not None:
        metrics.watch_index(lambda: searcher.index)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        state.queue.shutdown()

    app = offline_docs_app(
        title="tansaku",
        version=__version__,
        lifespan=lifespan,
        description="Japanese-first retrieve-and-rerank search. Rerank endpoints speak "
        "the Cohere v1/v2, Jina and TEI protocols.",
    )
    app.state.tansaku = state
    add_error_handlers(app)
    add_routes(app, state)

    @app.get("/metrics", tags=["info"], summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        await current_index(st=state)  # report the index version searches get
        return Response(metrics.exposition(), media_type=metrics.content_type)

    app.add_middleware(GuardMiddleware, api_key=api_key or None, max_body_bytes=max_body_bytes)
    paths = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=lambda: paths)
    # outermost: a request for a foreign Host is refused before the key or the body is looked at
    app.add_middleware(HostGuardMiddleware, allowed=AllowedHosts.of(allowed_hosts))
    return app
