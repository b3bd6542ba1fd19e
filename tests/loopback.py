"""Real HTTP servers for tests: uvicorn in a thread on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from tansaku.pipeline.serve import ConnectionLimits, uvicorn_config


@dataclass
class Served:
    """A running server: its base URL and the (method, path) of every request it received."""

    url: str
    port: int
    paths: list[tuple[str, str]] = field(default_factory=list)
    server: Any = None  # the uvicorn.Server (its server_state lists the open connections)

    def posted(self, since: int) -> list[str]:
        return [path for method, path in self.paths[since:] if method == "POST"]


def _recording(app: Any, paths: list[tuple[str, str]]) -> Callable[..., Any]:
    """ASGI wrapper noting request paths, to see where each client library really posts."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            paths.append((scope["method"], scope["path"]))
        await app(scope, receive, send)

    return wrapped


class LoopbackServers:
    """Starts apps on free loopback ports; ``close()`` stops them all.

    Each runs as ``tansaku serve`` runs it (:func:`tansaku.pipeline.serve.uvicorn_config`),
    with ``limits`` when given.
    """

    def __init__(self) -> None:
        self._running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(self, app: Any, limits: ConnectionLimits | None = None) -> Served:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; uvicorn serves this socket
        port = sock.getsockname()[1]
        served = Served(f"http://127.0.0.1:{port}", port)
        config = uvicorn_config(_recording(app, served.paths), limits=limits, log_level="warning")
        server = uvicorn.Server(config)
        served.server = server
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        self._running.append((server, thread))
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{served.url}/health", timeout=1).status_code == 200:
                    return served
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def close(self) -> None:
        for server, _ in self._running:
            server.should_exit = True
        for _, thread in self._running:
            thread.join(timeout=10)
        self._running.clear()
