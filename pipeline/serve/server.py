"""Running the app: uvicorn with tansaku's connection limits, the same for every install.

uvicorn's "auto" choices depend on what else is installed (httptools and uvloop come with
Ray, for one); the server always runs uvicorn's h11 protocol, subclassed in
:mod:`.connections` for the request deadlines and the connection cap, on the standard
asyncio loop, so its behaviour does not change with the environment.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from .connections import ConnectionLimits, protocol_class
from .limits import DEFAULT_HOST, DEFAULT_PORT


def uvicorn_config(
    app: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    limits: ConnectionLimits | None = None,
    log_level: str = "info",
    **options: Any,
) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` with ``limits`` (``options`` go to uvicorn as they are)."""
    limits = limits or ConnectionLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(limits),
        loop="asyncio",
        ws="none",  # no websocket endpoints: an upgrade request is answered as plain HTTP
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]  # any number works
        h11_max_incomplete_event_size=limits.max_header_bytes,
        server_header=False,
        log_level=log_level,
        **options,
    )


def serve(
    app: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    limits: ConnectionLimits | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``app`` (from :func:`~.app.create_app`) on ``host:port`` until interrupted.

    What ``tansaku serve`` runs: e.g. ``serve(create_app(searcher, reranker),
    limits=ConnectionLimits(header_timeout=5, max_connections=64))``.
    """
    uvicorn.Server(uvicorn_config(app, host=host, port=port, limits=limits, log_level=log_level)).run()
