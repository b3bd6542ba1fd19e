"""The application factory: :func:`create_app` wires state, guards, error handlers and routes."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from tansaku import __version__
from tansaku.index.errors import ConfigError

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
from .routes import add_routes
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
    state = ServerState(
        searcher,
        RerankService(reranker, model_name) if reranker else None,
        InferenceQueue(worker_threads, max_queue, request_timeout),
        max_documents,
        api_key or None,
        work=WorkLimits(max_pairs, max_tokens),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        state.queue.shutdown()

    app = FastAPI(
        title="tansaku",
        version=__version__,
        lifespan=lifespan,
        description="Japanese-first retrieve-and-rerank search. Rerank endpoints speak "
        "the Cohere v1/v2, Jina and TEI protocols.",
    )
    app.state.tansaku = state
    add_error_handlers(app)
    add_routes(app, state)
    app.add_middleware(GuardMiddleware, api_key=api_key or None, max_body_bytes=max_body_bytes)
    # outermost: a request for a foreign Host is refused before the key or the body is looked at
    app.add_middleware(HostGuardMiddleware, allowed=AllowedHosts.of(allowed_hosts))
    return app
