"""Requests turned away before any model work: API key, body size, request size, a full queue.

:class:`GuardMiddleware` checks the key and the body size as plain ASGI, before FastAPI
parses anything; the other guards are called by the routes and the inference queue.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .docs_assets import DOCS_ASSETS_URL
from .errors import ApiError, error_body

# Paths answered without an API key: liveness probes and the API documentation (no data).
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIX = DOCS_ASSETS_URL + "/"  # the docs pages' scripts and styles (a browser sends no key)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class GuardMiddleware:
    """Checks ``Authorization: Bearer KEY`` and the raw body size before the app parses anything.

    The size limit applies to the declared ``Content-Length`` (rejected without reading) and
    to the bytes actually received (chunked uploads), so no body over ``max_body_bytes`` is
    ever buffered. Paths in :data:`OPEN_PATHS` need no key.
    """

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and not _open(scope["path"]) and not self._authorized(scope):
            await send_error(
                send,
                ApiError(
                    401,
                    "missing or invalid API key: send 'Authorization: Bearer KEY'",
                    field="Authorization",
                    kind="authentication_error",
                    headers={"WWW-Authenticate": "Bearer"},
                ),
            )
            return
        if scope["method"] in _BODY_METHODS:
            try:
                body = await self._read_body(scope, receive)
            except ApiError as exc:
                await send_error(send, exc)
                return
            if body is None:
                return  # the client went away (or was cut off) mid-body: nothing to answer
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        value = _header(scope, b"authorization")
        scheme, _, token = (value or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        return hmac.compare_digest(token.strip(), self.api_key or b"")

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ApiError(400, "invalid Content-Length header", field="Content-Length")
            if int(declared) > self.max_body_bytes:
                raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"request body larger than {self.max_body_bytes} bytes (--max-body-bytes)",
            field="body",
            kind="payload_too_large",
        )


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIX)


def _header(scope: Mapping[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as usual

    return replay


async def send_error(send: Any, error: ApiError) -> None:
    """Answer ``error`` directly on an ASGI ``send`` (used before FastAPI is involved)."""
    payload = json.dumps(
        error_body(error.message, error.kind, error.field), ensure_ascii=False, separators=(",", ":")
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def check_count(n: int, name: str, max_documents: int) -> None:
    """413 when a request carries more than ``max_documents`` ``name`` (documents, texts)."""
    if n > max_documents:
        raise ApiError(
            413,
            f"{n} {name} is more than this server accepts per request ({max_documents}, --max-documents)",
            field=name,
            kind="payload_too_large",
        )


def check_ks(ks: Iterable[tuple[str, int | None]], max_documents: int) -> None:
    """422 for a search k (retrieve_k, rerank_k, top_n) above ``max_documents``."""
    for name, value in ks:
        if value is not None and value > max_documents:
            raise ApiError(422, f"{name} must be at most {max_documents} (--max-documents)", field=name)


def server_busy(in_flight: int) -> ApiError:
    """The 503 (with Retry-After) for a request arriving when the inference queue is full."""
    return ApiError(
        503,
        f"server busy: {in_flight} requests in flight; retry later",
        field=None,
        kind="server_busy",
        headers={"Retry-After": "1"},
    )


def request_timed_out(seconds: float) -> ApiError:
    """The 504 for a request whose model work did not finish within ``--request-timeout``."""
    return ApiError(
        504,
        f"the request did not finish within {seconds:g} s (--request-timeout), counted from "
        "when it joined the inference queue; send fewer or shorter texts, or retry later",
        field=None,
        kind="timeout",
    )


def check_unicode(body: Any) -> None:
    """A 422 naming the first string of a request that is not valid Unicode (a lone surrogate).

    JSON can spell one (``"\\ud800"``); it would fail later, as a 500, when SQLite binds it or
    the response is encoded.
    """
    path = _bad_string(body.model_dump() if hasattr(body, "model_dump") else body, "")
    if path is not None:
        raise ApiError(422, f"{path} is not valid Unicode (it holds a lone surrogate)", field=path)


def _bad_string(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = _bad_string(key, where) or _bad_string(item, where)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _bad_string(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
