"""The ``Host`` header check: a guard against DNS rebinding.

A web page on an attacker's domain can rebind that domain to 127.0.0.1 and read a local
server's answers from the victim's browser; the browser then sends the attacker's name in
``Host``. So only Hosts that cannot be rebound are accepted by default: IP addresses
(``127.0.0.1``, ``[::1]``, ``192.0.2.7``...) and ``localhost``, with or without a port. Other
names must be allowed (``--allowed-hosts``; ``*`` allows any, e.g. behind a proxy that checks
names itself). Requests without a ``Host``, or with an empty one (HTTP/1.0 tools), pass:
browsers always send the name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ApiError
from .guards import send_error

ALWAYS_ALLOWED = frozenset({"localhost"})


def host_name(value: str) -> str:
    """The name in a ``Host`` value, lower-cased, without port, brackets or a final dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6] or [v6]:port
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".") if value not in ("", ".") else value


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class AllowedHosts:
    """The host names a server answers besides IP addresses and ``localhost``.

    ``names`` may hold ``*`` (any host) and ``*.example.com`` (that domain's subdomains).
    """

    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, names: Iterable[str] | None) -> AllowedHosts:
        """From option values: names as given, or comma-separated lists of them."""
        found: set[str] = set()
        for item in names or ():
            found.update(host_name(n) if n.strip() != "*" else "*" for n in item.split(",") if n.strip())
        return cls(frozenset(found))

    def allows(self, name: str) -> bool:
        if "*" in self.names or name in self.names or name in ALWAYS_ALLOWED or _is_address(name):
            return True
        return any(n.startswith("*.") and name.endswith(n[1:]) for n in self.names)


class HostGuardMiddleware:
    """Answers 400 to a request whose ``Host`` is not allowed, before anything else runs."""

    def __init__(self, app: Any, *, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw = next((v for k, v in scope.get("headers", ()) if k.lower() == b"host"), None)
            name = host_name(raw.decode("latin-1")) if raw is not None else None
            if name and not self.allowed.allows(name):
                await send_error(send, not_allowed(name))
                return
        await self.app(scope, receive, send)


def not_allowed(name: str) -> ApiError:
    """The 400 for a ``Host`` this server does not answer, saying how to allow it."""
    shown = name if name.isascii() and name.isprintable() else repr(name)
    return ApiError(
        400,
        f"host {shown!r} is not served here: this server answers IP addresses, localhost and "
        "the names given with --allowed-hosts (a guard against DNS rebinding); start it with "
        f"--allowed-hosts {shown} to accept this name",
        field="Host",
        kind="invalid_host",
    )
