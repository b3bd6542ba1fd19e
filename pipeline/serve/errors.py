"""The one error shape of every endpoint, and the handlers that turn exceptions into it.

Every error is ``{"error": {"message", "type", "field"}, "detail": ...}``; ``field`` names
the part of the request at fault (``documents[2].text``, ``top_n``, ``model``, ``body``...).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tansaku.index.errors import ConfigError, TansakuError

from .models import UNION_TAGS

logger = logging.getLogger("tansaku.server")

_FIELD_HINTS = {
    "top_k": "the number of results is top_n; top_k is refused rather than silently ignored",
}


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "field"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None,
        kind: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.kind = kind
        self.headers = dict(headers or {})


def error_body(message: str, kind: str, field: str | None, detail: Any = None) -> dict[str, Any]:
    """The one error shape every endpoint uses (``detail`` mirrors FastAPI's own key)."""
    return {
        "error": {"message": message, "type": kind, "field": field},
        "detail": message if detail is None else detail,
    }


def _field_path(loc: Sequence[Any]) -> str:
    """``("body", "cohere", "documents", 2, "text")`` → ``"documents[2].text"``."""

    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in UNION_TAGS:
            path += f".{part}" if path else str(part)
    return path or "body"


def validation_error(errors: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Status and body for pydantic/FastAPI validation errors (invalid JSON → 400, else 422)."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]  # never echo the input back
    first: Mapping[str, Any] = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx")
        reason = ctx.get("error", "JSON decode error") if isinstance(ctx, Mapping) else "JSON decode error"
        return 400, error_body(f"request body is not valid JSON: {reason}", "invalid_json", "body", detail)
    path = _field_path(first.get("loc", ()))
    kind = first.get("type")
    if kind == "extra_forbidden":
        message = f"unknown field '{path}'"
        hint = _FIELD_HINTS.get(path.rsplit(".", 1)[-1])
        message += f" ({hint})" if hint else " (see /docs for the accepted fields)"
    elif kind == "missing":
        message = f"'{path}' is required"
    elif kind == "model_attributes_type" and path == "body":
        message = "the request body must be a JSON object (send Content-Type: application/json)"
    else:
        message = f"'{path}': {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s), see detail)"
    return 422, error_body(message, "invalid_request_error", path, detail)


def _config_error_field(message: str) -> str | None:
    # tansaku's ConfigError messages start with or mention the parameter at fault
    if "dense" in message:
        return "mode"
    for name in ("rerank_k", "retrieve_k", "top_n", "mode", "query", "max_chunks_per_doc"):
        if name in message:
            return name
    return None


def add_error_handlers(app: FastAPI) -> None:
    """Answer every exception on ``app`` in the one error shape (4xx for bad input, else 500)."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Any, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.kind, exc.field), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Any, exc: RequestValidationError) -> JSONResponse:
        status, body = validation_error(exc.errors())
        return JSONResponse(body, status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Any, exc: HTTPException) -> JSONResponse:
        # FastAPI raises 400 itself for a body it cannot parse at all (e.g. nested too deeply)
        kind = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(str(exc.detail), kind, "body" if exc.status_code == 400 else None),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(ConfigError)
    async def config_error(_request: Any, exc: ConfigError) -> JSONResponse:
        # a parameter the pipeline rejected: bad input, never a server fault
        message = str(exc)
        return JSONResponse(error_body(message, "invalid_request_error", _config_error_field(message)), 422)

    @app.exception_handler(TansakuError)
    async def server_error(_request: Any, exc: TansakuError) -> JSONResponse:
        # e.g. a model or index file failing to load: the operator's problem, said plainly
        logger.error("tansaku error: %s", exc)
        return JSONResponse(error_body(str(exc), "server_error", None), 500)

    @app.exception_handler(Exception)
    async def unexpected(_request: Any, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=exc)
        return JSONResponse(error_body("internal server error", "internal_error", None), 500)
