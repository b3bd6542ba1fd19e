"""Connection limits uvicorn lacks: deadlines for the request head and body, and a connection cap.

uvicorn arms its keep-alive timer only after a response, so a client that connects and sends
a partial request head (or a body that never ends) holds its connection, and a file
descriptor, forever: about 1,000 of them exhausted the process's descriptors and ``/health``
stopped answering. :func:`protocol_class` returns a subclass of uvicorn's h11 protocol that

- closes a connection whose request head is not complete ``header_timeout`` seconds after
  the connection opened (or after the first byte of a later request on a kept-alive
  connection): silently if nothing was sent, else with a 408;
- answers 408 and closes when a request body is not complete ``body_timeout`` seconds after
  its head;
- holds at most ``max_connections`` connections: a new connection beyond that closes the one
  that has waited longest for its client to finish a request (an idle keep-alive connection,
  a partial head, a slow body), and is refused with a 503 only when every connection has a
  complete request being answered. So slow clients cannot lock out the others.

The idle time between requests stays uvicorn's ``timeout_keep_alive``. Only the h11
implementation is subclassed: the server always runs it (see :mod:`.server`), whatever else
is installed, so these limits hold everywhere.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body
from .limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    check_positive_ints,
    check_positive_numbers,
)

_REASONS = {408: "Request Timeout", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits of the HTTP server (seconds, counts, bytes)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    """Seconds a client has to send a complete request head."""
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    """Seconds a client has, after the head, to send the whole body."""
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT
    """Seconds an idle connection is kept open between requests (uvicorn's timeout_keep_alive)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections at most; see the module docstring for who makes room."""
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    """Largest request head (h11's max_incomplete_event_size); more is a 400."""

    def __post_init__(self) -> None:
        check_positive_numbers(
            {
                "header_timeout": self.header_timeout,
                "body_timeout": self.body_timeout,
                "keep_alive_timeout": self.keep_alive_timeout,
            }
        )
        check_positive_ints(
            {"max_connections": self.max_connections, "max_header_bytes": self.max_header_bytes}
        )


def protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``limits`` enforced (pass it as ``uvicorn.Config(http=...)``)."""
    bound = limits

    class Limited(LimitedH11Protocol):
        limits = bound

    return Limited


class LimitedH11Protocol(H11Protocol):
    """See the module docstring; ``limits`` is set by :func:`protocol_class`."""

    limits: ConnectionLimits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When the current request started waiting on the client; None while it is answered.
        self.waiting_since: float | None = time.monotonic()
        self._received = False  # any byte of the current request yet?
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connections ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.limits.max_connections and not self._make_room()
        super().connection_made(transport)
        if full:
            self._close(
                503,
                f"this server holds at most {self.limits.max_connections} connections "
                "(--max-connections) and all are answering requests; retry later",
                kind="server_busy",
                retry_after=True,
                owed=True,  # said before the request comes, so the client knows why
            )
            return
        self.waiting_since = time.monotonic()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for its client; False if none waits."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, LimitedH11Protocol) and c.waiting_since is not None and not c._closing()
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.waiting_since or 0.0)
        oldest._close(
            503,
            f"closed to make room: this server holds at most {self.limits.max_connections} "
            "connections (--max-connections) and this one waited longest for its request",
            kind="server_busy",
            retry_after=True,
        )
        return True

    # -- reading requests -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._header_timer is None and data:
            # the first byte of a request on a kept-alive connection starts its head's clock
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)
            self.waiting_since = time.monotonic()
        self._received = self._received or bool(data)
        super().data_received(data)
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._closing():
            return
        if self.conn.their_state is h11.IDLE:
            # between requests: idle until the next byte (uvicorn's keep-alive timer runs)
            self.waiting_since = time.monotonic()
            self._received = bool(self.conn.trailing_data[0])
            if self._received and self._header_timer is None:
                self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)
        self._follow_state()

    def _follow_state(self) -> None:
        """Move the deadlines along with the request: head, then body, then answered."""
        state = self.conn.their_state
        if state is h11.IDLE:
            return  # still reading the head
        self._cancel(header=True)
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
        else:  # the whole request is in (or the connection is done): the app has it
            self._cancel(body=True)
            self.waiting_since = None

    # -- deadlines -------------------------------------------------------------------------------------

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._closing() or self.conn.their_state is not h11.IDLE:
            return
        self._close(
            408,
            f"request head not complete within {self.limits.header_timeout:g} s (--header-timeout)",
            kind="request_timeout",
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        self._close(
            408,
            f"request body not complete within {self.limits.body_timeout:g} s of its head (--body-timeout)",
            kind="request_timeout",
            field="body",
        )

    def _close(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        field: str | None = None,
        retry_after: bool = False,
        owed: bool | None = None,
    ) -> None:
        """Answer ``status`` with the server's error JSON, if the client is ``owed`` one, and close.

        By default it is owed one when part of a request came and no answer to it has begun;
        a connection that sent nothing (or is idle between requests) is closed silently.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # the app stops waiting for the body: receive() now says the client went away
            cycle.disconnected = True
            cycle.message_event.set()
        if owed is None and self.conn.their_state is h11.IDLE:
            owed = self._received
        elif owed is None:
            owed = cycle is not None and not cycle.response_started
        if owed:
            payload = json.dumps(error_body(message, kind, field), ensure_ascii=False).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n"
                + ("retry-after: 1\r\n" if retry_after else "")
                + "\r\n"
            )
            self.transport.write(head.encode() + payload)
        self.transport.close()
        self._cancel_timers()
        self.waiting_since = None
        # connection_lost comes later, from the transport; it no longer counts from now on
        self.connections.discard(self)

    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _cancel(self, *, header: bool = False, body: bool = False) -> None:
        if header and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if body and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel(header=True, body=True)
