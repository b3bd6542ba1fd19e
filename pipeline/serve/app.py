"""``tansaku serve``: search and Cohere/Jina/TEI-compatible reranking over HTTP (FastAPI + uvicorn).

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /v1/rerank``, ``POST /v2/rerank``, ``POST /rerank``: Cohere v1/v2 bodies (what the
  Cohere SDKs, LiteLLM's cohere and jina_ai providers, LangChain, LlamaIndex... send);
  ``POST /rerank`` also takes Text Embeddings Inference's body (``texts`` instead of
  ``documents``) and then answers TEI's bare sorted array.
- ``POST /v1/search``: the retrieve (+ rerank) pipeline over the loaded index.
- ``GET /v1/models`` (OpenAI-style list of what is loaded) and ``GET /health``.

Every error is ``{"error": {"message", "type", "field"}, "detail": ...}`` with a 4xx status for
bad input; ``field`` names the part of the request at fault (``documents[2].text``, ``top_n``,
``model``, ``body``...). Inference runs on a small dedicated thread pool, so the event loop
(and ``/health``) stays responsive while requests queue for the model.

Heavy imports (FastAPI, the models) happen inside :func:`create_app` and :func:`run_serve`, so
importing this module to register the CLI command costs nothing. For the same reason this
module does not use ``from __future__ import annotations``: FastAPI must see real classes in
the route functions' annotations, which are defined inside :func:`create_app`.
"""

import argparse
import asyncio
import functools
import hmac
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from tansaku.index.errors import ConfigError, TansakuError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tansaku.pipeline.api import Searcher
    from tansaku.rerank.base import Reranker

    from .models import CohereRerankRequest, SearchRequest, TEIRerankRequest

logger = logging.getLogger("tansaku.server")

T = TypeVar("T")

DEFAULT_MAX_DOCUMENTS = 10_000
DEFAULT_MAX_BODY_BYTES = 10 * 2**20
DEFAULT_MAX_QUEUE = 64
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
API_KEY_ENV = "TANSAKU_API_KEY"
# Paths answered without an API key: liveness probes and the API documentation (no data).
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
# Cohere bills one search unit per query and 100 documents; reported the same way.
DOCUMENTS_PER_SEARCH_UNIT = 100
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_FIELD_HINTS = {
    "top_k": "the number of results is top_n; top_k is refused rather than silently ignored",
}


# -- errors --------------------------------------------------------------------------------------


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
    from .models import UNION_TAGS

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


# -- the reranker as the API sees it ------------------------------------------------------------


@dataclass(frozen=True)
class RerankOutcome:
    """Ranked ``(request index, score)`` pairs, best first, and the input tokens counted.

    Scores are sigmoid scores in [0, 1]; ``raw`` holds the logits they come from, in the same
    order, only when raw scores were asked for.
    """

    ranked: list[tuple[int, float]]
    tokens: int
    raw: list[float] | None = None


class RerankService:
    """A loaded reranker plus what the API needs around it.

    Public name and aliases (for the ``model`` field), token counting with the reranker's own
    tokenizer (for ``usage``), ``max_tokens_per_doc`` truncation, and per-request
    ``max_chunks_per_doc`` (a shallow copy of the reranker sharing its weights).
    """

    def __init__(self, reranker: "Reranker", name: str | None = None) -> None:
        self.reranker = reranker
        self.source = str(getattr(reranker, "model_name", "") or type(reranker).__name__)
        self.name = name or _public_name(self.source)
        self.aliases = frozenset(a for a in (self.name, self.source, Path(self.source).name) if a)
        self.tokenizer: Any = getattr(reranker, "tokenizer", None)
        max_length = getattr(reranker, "max_length", None)
        self.max_length = max_length if isinstance(max_length, int) else None
        max_chunks = getattr(reranker, "max_chunks_per_doc", None)
        self.max_chunks = max_chunks if isinstance(max_chunks, int) else None
        self._pair_specials = _pair_specials(self.tokenizer)
        self._variants: dict[int, Any] = {}
        self._lock = threading.Lock()

    def check_model(self, model: str | None) -> None:
        """Accept no model (or ""), the public name, the source id/directory or its basename."""
        if model and model not in self.aliases:
            raise ApiError(
                404,
                f"unknown model {model!r}: this server serves {self.name!r}",
                field="model",
                kind="model_not_found",
            )

    def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        raw: bool = False,
        max_chunks: int | None = None,
        max_tokens: int | None = None,
    ) -> RerankOutcome:
        """Score and rank ``texts`` (runs on an inference thread).

        Ranked like the in-process reranker (ties keep request order); with ``raw`` on the
        logits, so both the logits and the scores come out in descending order even where
        float32 sigmoids saturate to equal scores.
        """
        from tansaku.rerank.base import ranked_hits

        texts, tokens = self.truncate_and_count(query, texts, max_tokens)
        scores, logits = self._scores(self._with_max_chunks(max_chunks), query, texts, raw)
        key = scores if logits is None else logits
        order = [int(h.doc_id) for h in ranked_hits(texts, key, top_n)]
        return RerankOutcome(
            [(i, float(scores[i])) for i in order],
            tokens,
            None if logits is None else [float(logits[i]) for i in order],
        )

    def truncate_and_count(
        self, query: str, texts: Sequence[str], max_tokens: int | None
    ) -> tuple[list[str], int]:
        """Cut documents to ``max_tokens`` tokens; count query + document + special tokens.

        The count is what the pairs hold before windowing (one query per document), the
        figure a hosted reranker bills; window overlap is not counted twice.
        """
        texts = list(texts)
        if self.tokenizer is None:
            if max_tokens:
                raise ApiError(
                    422, "max_tokens_per_doc needs a reranker with a tokenizer", field="max_tokens_per_doc"
                )
            return texts, 0
        query_tokens = len(self._encode([query])["input_ids"][0])
        offsets = bool(max_tokens) and bool(getattr(self.tokenizer, "is_fast", False))
        encoded = self._encode(texts, offsets=offsets)
        total = 0
        for i, ids in enumerate(encoded["input_ids"]):
            n = len(ids)
            if max_tokens and n > max_tokens:
                spans = encoded["offset_mapping"][i] if offsets else None
                texts[i] = self._cut(texts[i], max_tokens, spans)
                n = max_tokens
            total += query_tokens + n + self._pair_specials
        return texts, total

    def _encode(self, texts: list[str], *, offsets: bool = False) -> Any:
        # verbose=False: long documents are expected; they are cut or windowed, never fed whole
        kwargs: dict[str, Any] = {"add_special_tokens": False, "verbose": False}
        if offsets:
            kwargs["return_offsets_mapping"] = True
        return self.tokenizer(texts, **kwargs)

    def _cut(self, text: str, max_tokens: int, spans: Sequence[tuple[int, int]] | None) -> str:
        """``text`` up to the character where its ``max_tokens``-th token ends."""
        if spans is not None:
            return text[: spans[max_tokens - 1][1]]
        # slow tokenizers (e.g. MeCab-based BertJapaneseTokenizer) give no offsets: find the
        # longest prefix with at most max_tokens tokens by bisection
        low, high = 0, len(text)
        while low < high:
            mid = (low + high + 1) // 2
            if len(self._encode([text[:mid]])["input_ids"][0]) <= max_tokens:
                low = mid
            else:
                high = mid - 1
        return text[:low]

    def _with_max_chunks(self, max_chunks: int | None) -> Any:
        if not max_chunks or self.max_chunks is None or max_chunks >= self.max_chunks:
            return self.reranker
        with self._lock:
            variant = self._variants.get(max_chunks)
            if variant is None:
                # shares the model and tokenizer; only the window limit differs
                variant = self.reranker.with_options(max_chunks_per_doc=max_chunks)
                self._variants[max_chunks] = variant
        return variant

    def _scores(
        self, reranker: Any, query: str, texts: list[str], raw: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores in [0, 1] and, when ``raw``, the logits they are the sigmoid of.

        ``relevance_score`` promises [0, 1] to every client, so a logit is never returned as
        a score: it goes to its own field.
        """
        pairs = [(query, text) for text in texts]
        compute = getattr(reranker, "compute_score", None)
        if compute is not None:
            if not raw:
                # explicit normalisation: sigmoid scores whatever activation the reranker has
                return np.asarray(compute(pairs, normalize=True), dtype=np.float32), None
            logits = np.asarray(compute(pairs, normalize=False), dtype=np.float32)
            return _sigmoid(logits), logits
        if raw:
            raise ApiError(422, "this reranker cannot return raw scores", field="raw_scores")
        scores = np.asarray(reranker.score(pairs), dtype=np.float32)
        if not np.all((scores >= 0) & (scores <= 1)):  # NaN fails too
            raise TansakuError(
                f"reranker {self.source!r} returned scores outside [0, 1] (e.g. "
                "logits); serve it with a compute_score(pairs, normalize=...) "
                "method or sigmoid scores"
            )
        return scores, None


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # torch's float32 sigmoid, as CrossEncoderReranker applies it: equal to its normalized scores
    import torch

    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits))).numpy()


def _public_name(source: str) -> str:
    # a local directory is named by its basename (clients need not know server paths)
    return Path(source).name if source and Path(source).is_dir() else source


def _pair_specials(tokenizer: Any) -> int:
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    try:
        return int(count(pair=True)) if count else 0
    except Exception:  # a tokenizer without a pair template: count content tokens only
        return 0


def document_texts(documents: Sequence[Any], rank_fields: Sequence[str] | None) -> list[str]:
    """The text to rank for each request document.

    A string is its own text. An object is ranked on its ``text`` field, or, with
    ``rank_fields``, on those fields as ``"name: value"`` lines in ``rank_fields`` order
    (absent or null fields skipped; values must be strings or numbers), as Cohere v1 did.
    """
    return [_document_text(i, doc, rank_fields) for i, doc in enumerate(documents)]


def _document_text(i: int, doc: Any, rank_fields: Sequence[str] | None) -> str:
    where = f"documents[{i}]"
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, dict):
        raise ApiError(
            422,
            f"{where} must be a string or an object with a 'text' field, got {_json_type(doc)}",
            field=where,
        )
    if rank_fields:
        lines = []
        for name in rank_fields:
            value = doc.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ApiError(
                    422,
                    f"{where}.{name} must be a string or a number to rank on, got {_json_type(value)}",
                    field=f"{where}.{name}",
                )
            lines.append(f"{name}: {value}")
        if not lines:
            raise ApiError(422, f"{where} has none of the rank_fields {list(rank_fields)}", field=where)
        return "\n".join(lines)
    text = doc.get("text")
    if not isinstance(text, str):
        problem = "has no 'text' field" if text is None else f"'text' is {_json_type(text)}"
        raise ApiError(
            422,
            f"{where} {problem}; documents need a string 'text' (or use rank_fields)",
            field=f"{where}.text",
        )
    return text


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _returned_document(original: Any, text: str) -> dict[str, Any]:
    # objects come back with all their fields (Cohere v1); "text" is always a string
    if isinstance(original, dict):
        out = dict(original)
        if not isinstance(out.get("text"), str):
            out["text"] = text
        return out
    return {"text": original}


# -- inference off the event loop ----------------------------------------------------------------


class InferenceQueue:
    """A small dedicated thread pool for model work, with a bound on waiting requests.

    The event loop only awaits futures, so ``/health`` answers while the model is busy.
    ``in_flight`` (running + waiting) is only touched on the event loop thread.
    """

    def __init__(self, threads: int, max_queue: int) -> None:
        self.threads = threads
        self.max_queue = max_queue
        self.in_flight = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="tansaku-inference")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on an inference thread; 503 when ``max_queue`` requests already wait."""
        if self.in_flight >= self.threads + self.max_queue:
            raise ApiError(
                503,
                f"server busy: {self.in_flight} requests in flight; retry later",
                field=None,
                kind="server_busy",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        # released when the work really ends, even if the client went away meanwhile
        future.add_done_callback(self._release)
        return await asyncio.shield(future)

    def _release(self, _future: Any) -> None:
        self.in_flight -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# -- authentication and body size (plain ASGI, before any parsing) -------------------------------


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
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
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
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        value = _header(scope, b"authorization")
        scheme, _, token = (value or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        return hmac.compare_digest(token.strip(), self.api_key or b"")

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes:
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
                break
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


# -- the application ------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the routes share: the loaded models, limits and the inference queue."""

    searcher: "Searcher | None"
    service: RerankService | None
    queue: InferenceQueue
    max_documents: int
    api_key: str | None
    started: float = field(default_factory=time.time)
    search_lock: threading.Lock = field(default_factory=threading.Lock)

    def require_reranker(self) -> RerankService:
        if self.service is None:
            raise ApiError(
                409,
                "this server was started without a reranker (--reranker)",
                field="model",
                kind="not_available",
            )
        return self.service

    def require_searcher(self) -> "Searcher":
        if self.searcher is None:
            raise ApiError(
                409,
                "this server has no index loaded (started with --no-index)",
                field=None,
                kind="not_available",
            )
        return self.searcher

    def check_count(self, n: int, name: str) -> None:
        if n > self.max_documents:
            raise ApiError(
                413,
                f"{n} {name} is more than this server accepts per request "
                f"({self.max_documents}, --max-documents)",
                field=name,
                kind="payload_too_large",
            )

    def run_search(self, query: str, overrides: dict[str, Any], flt: Any = None) -> tuple[Any, str]:
        # one search at a time: the index's SQLite connection and MeCab tagger are shared
        assert self.searcher is not None
        with self.search_lock:
            pipeline = self.searcher.pipeline(**overrides)
            return pipeline.search(query, filter=flt), str(pipeline.retriever.stage)


def create_app(
    searcher: "Searcher | None",
    reranker: "Reranker | None",
    *,
    api_key: str | None = None,
    max_documents: int = DEFAULT_MAX_DOCUMENTS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    model_name: str | None = None,
    worker_threads: int = 1,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> "FastAPI":
    """The FastAPI app serving ``searcher`` (may be None: rerank only) and ``reranker``.

    ``api_key`` enables Bearer authentication (``/health`` and the docs stay open);
    ``model_name`` is the name clients use in ``model`` (default: the reranker's hub id, or
    its directory's name). ``worker_threads`` model calls run at once; up to ``max_queue``
    more wait, beyond that requests get a 503.
    """
    for name, value in (
        ("max_documents", max_documents),
        ("max_body_bytes", max_body_bytes),
        ("worker_threads", worker_threads),
        ("max_queue", max_queue),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if searcher is None and reranker is None:
        raise ConfigError("nothing to serve: give an index, a reranker or both")
    from fastapi import FastAPI

    from tansaku import __version__

    state = ServerState(
        searcher,
        RerankService(reranker, model_name) if reranker else None,
        InferenceQueue(worker_threads, max_queue),
        max_documents,
        api_key or None,
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
    _add_error_handlers(app)
    _add_routes(app, state)
    app.add_middleware(GuardMiddleware, api_key=api_key or None, max_body_bytes=max_body_bytes)
    return app


def _add_error_handlers(app: "FastAPI") -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

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


def _add_routes(app: "FastAPI", st: ServerState) -> None:
    from fastapi import Depends
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPBearer

    from . import models as m

    # documents the Bearer scheme in OpenAPI ("Authorize" in /docs); the check is GuardMiddleware's
    secured = [Depends(HTTPBearer(auto_error=False))] if st.api_key else []
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": m.ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
    }
    common: dict[str, Any] = {"responses": errors, "dependencies": secured}

    @app.post(
        "/v1/rerank",
        response_model=m.RerankResponse,
        tags=["rerank"],
        summary="Rerank documents (Cohere v1, Jina)",
        **common,
    )
    async def rerank_v1(body: m.CohereRerankRequest) -> JSONResponse:
        return JSONResponse(await cohere_rerank(st, body, version="1"))

    @app.post(
        "/v2/rerank",
        response_model=m.RerankResponse,
        tags=["rerank"],
        summary="Rerank documents (Cohere v2)",
        **common,
    )
    async def rerank_v2(body: m.CohereRerankRequest) -> JSONResponse:
        return JSONResponse(await cohere_rerank(st, body, version="2"))

    @app.post(
        "/rerank",
        response_model=m.RerankResponse | list[m.TEIRerankResult],
        tags=["rerank"],
        summary="Rerank: Cohere body (documents) or TEI body (texts → bare array)",
        **common,
    )
    async def rerank_any(body: m.AnyRerankRequest) -> JSONResponse:
        if isinstance(body, m.TEIRerankRequest):
            return JSONResponse(await tei_rerank(st, body))
        return JSONResponse(await cohere_rerank(st, body, version="1"))

    @app.post(
        "/v1/search",
        response_model=m.SearchResponse,
        tags=["search"],
        summary="Search the index (retrieve, then rerank when a reranker is loaded)",
        **common,
    )
    async def search(body: m.SearchRequest) -> JSONResponse:
        return JSONResponse(await run_search(st, body))

    @app.get("/v1/models", response_model=m.ModelList, tags=["info"], summary="What is loaded", **common)
    async def models() -> JSONResponse:
        return JSONResponse(model_list(st))

    @app.get("/health", response_model=m.Health, tags=["info"], summary="Liveness (no key needed)")
    async def health() -> JSONResponse:
        searcher = st.searcher
        return JSONResponse(
            {
                "status": "ok",
                "reranker": st.service.name if st.service else None,
                "index": searcher is not None,
                "documents": len(searcher.index) if searcher is not None else None,
                "in_flight": st.queue.in_flight,
                "uptime_s": round(time.time() - st.started, 3),
            }
        )


# -- endpoint logic --------------------------------------------------------------------------------


async def cohere_rerank(st: ServerState, body: "CohereRerankRequest", *, version: str) -> dict[str, Any]:
    """A Cohere-shaped rerank response for a :class:`~.server_models.CohereRerankRequest`."""
    service = st.require_reranker()
    service.check_model(body.model)
    st.check_count(len(body.documents), "documents")
    texts = document_texts(body.documents, body.rank_fields)
    spans = body.relevant_spans
    if spans is not None and spans.get("mode", "disabled") != "disabled":
        raise ApiError(422, "relevant_spans is not supported by this server", field="relevant_spans")
    warnings = []
    max_chunks = body.max_chunks_per_doc
    if max_chunks and service.max_chunks and max_chunks > service.max_chunks:
        warnings.append(f"max_chunks_per_doc={max_chunks} capped at this server's {service.max_chunks}")
        max_chunks = service.max_chunks
    outcome = await st.queue.run(
        service.rerank,
        body.query,
        texts,
        top_n=body.top_n,
        raw=bool(body.raw_scores),
        max_chunks=max_chunks,
        max_tokens=body.max_tokens_per_doc,
    )
    results = []
    for n, (index, score) in enumerate(outcome.ranked):
        result: dict[str, Any] = {"index": index, "relevance_score": score}
        if outcome.raw is not None:
            result["raw_score"] = outcome.raw[n]
        if body.return_documents:
            result["document"] = _returned_document(body.documents[index], texts[index])
        results.append(result)
    meta: dict[str, Any] = {
        "api_version": {"version": version},
        "billed_units": {"search_units": math.ceil(len(texts) / DOCUMENTS_PER_SEARCH_UNIT)},
        "tokens": {"input_tokens": outcome.tokens, "output_tokens": 0},
    }
    if warnings:
        meta["warnings"] = warnings
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": meta,
        "usage": {"total_tokens": outcome.tokens, "prompt_tokens": outcome.tokens},
        "model": service.name,
    }


async def tei_rerank(st: ServerState, body: "TEIRerankRequest") -> list[dict[str, Any]]:
    """TEI's answer: ``[{"index", "score", "text"?}]`` sorted by descending score."""
    service = st.require_reranker()
    st.check_count(len(body.texts), "texts")
    if body.truncation_direction != "Right":
        raise ApiError(422, "only truncation_direction 'Right' is supported", field="truncation_direction")
    # truncate: score only the first window; otherwise long texts get their best window
    outcome = await st.queue.run(
        service.rerank, body.query, body.texts, raw=body.raw_scores, max_chunks=1 if body.truncate else None
    )
    scores = outcome.raw if outcome.raw is not None else [s for _, s in outcome.ranked]
    # TEI's own contract: with raw_scores, "score" is the logit
    return [
        {"index": index, "score": score, **({"text": body.texts[index]} if body.return_text else {})}
        for (index, _), score in zip(outcome.ranked, scores, strict=True)
    ]


async def run_search(st: ServerState, body: "SearchRequest") -> dict[str, Any]:
    """Run the search pipeline for a :class:`~.server_models.SearchRequest`."""
    searcher = st.require_searcher()
    for name in ("retrieve_k", "rerank_k", "top_n"):
        value = getattr(body, name)
        if value is not None and value > st.max_documents:
            raise ApiError(422, f"{name} must be at most {st.max_documents} (--max-documents)", field=name)
    config = searcher.config
    retrieve_k = body.retrieve_k or config.retrieve_k
    # a smaller retrieve_k alone shrinks the default rerank_k with it instead of failing
    rerank_k = body.rerank_k or min(config.rerank_k, retrieve_k)
    if rerank_k > retrieve_k:
        raise ApiError(
            422, f"rerank_k ({rerank_k}) cannot exceed retrieve_k ({retrieve_k})", field="rerank_k"
        )
    if body.mode in ("dense", "hybrid") and searcher.index.dense is None:
        raise ApiError(422, f"mode {body.mode!r} needs a dense index; this index is BM25 only", field="mode")
    from tansaku.index.filters import parse_filter

    try:
        flt = parse_filter(body.filter)
    except ConfigError as exc:  # the message names the operator or field inside the filter
        raise ApiError(422, str(exc), field="filter") from None
    overrides: dict[str, Any] = {
        "retrieve_k": retrieve_k,
        "rerank_k": rerank_k,
        "top_n": body.top_n or config.top_n,
    }
    if body.mode:
        overrides["mode"] = body.mode
    result, mode = await st.queue.run(st.run_search, body.query, overrides, flt)
    reranked = bool(config.reranker) and config.reranker.lower() != "none"
    model = (st.service.name if st.service else config.reranker) if reranked else None
    return {
        "query": body.query,
        "mode": mode,
        "model": model,
        "hits": [_hit_json(hit) for hit in result.hits],
        "timings_ms": {k: round(float(v), 3) for k, v in result.timings_ms.items()},
        "counts": {k: int(v) for k, v in result.counts.items()},
    }


def _hit_json(hit: Any) -> dict[str, Any]:
    return {
        "id": hit.doc_id,
        "title": hit.title,
        "text": hit.text,
        "score": float(hit.score),
        "rank": int(hit.rank),
        "stage": hit.stage,
        "metadata": dict(hit.metadata),
    }


def model_list(st: ServerState) -> dict[str, Any]:
    """OpenAI-style ``{"object": "list", "data": [...]}`` plus the loaded index."""
    data = []
    if st.service is not None:
        data.append(
            {
                "id": st.service.name,
                "object": "model",
                "created": int(st.started),
                "owned_by": "tansaku",
                "type": "reranker",
                "source": st.service.source,
                "max_length": st.service.max_length,
            }
        )
    index = None
    if st.searcher is not None:
        idx = st.searcher.index
        index = {"path": os.path.abspath(idx.path), "documents": len(idx), "dense": idx.dense is not None}
    return {"object": "list", "data": data, "index": index}


# -- command line ---------------------------------------------------------------------------------

SERVE_DESCRIPTION = """\
Serve INDEX and/or a reranker over HTTP for RAG stacks. Either INDEX or --no-index
(a pure rerank server, which then needs --reranker) must be given, so an index is
never left out by accident.

Endpoints (OpenAPI docs at http://HOST:PORT/docs):
  POST /v1/rerank, /v2/rerank, /rerank
        Cohere v1/v2 body: query, documents (strings or objects with "text"; with
        rank_fields, objects are ranked on "name: value" lines of those fields),
        model (optional, "" counts as absent; else it must name the loaded
        reranker: --model-name, the hub id/directory or its basename; other
        names get a 404 naming "model"), top_n (default: all),
        return_documents, max_chunks_per_doc (v1; capped at --max-chunks-per-doc),
        max_tokens_per_doc (v2; each document cut to its first N tokens, then
        windowed as usual), raw_scores (each result also gets its logit as
        "raw_score"; relevance_score is always the sigmoid score in [0, 1]).
        Answer: {"id", "results": [{"index", "relevance_score", "raw_score"?,
        "document"?}],
        "meta", "usage", "model"}. The Cohere SDKs, LiteLLM (cohere/, jina_ai/)
        and other Cohere/Jina clients work unchanged with this server as base URL.
  POST /rerank with a TEI body (query, texts, raw_scores, return_text, truncate)
        answers Text Embeddings Inference's bare array [{"index", "score", "text"?}].
  POST /v1/search   query, top_n, retrieve_k, rerank_k, mode, filter → ranked hits
        (id, title, text, score, rank, stage, metadata), timings_ms, counts.
        filter: a metadata filter object, e.g. {"lang": "ja", "year": {"$gte": 2020}}
        ($eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $not).
  GET  /v1/models   what is loaded (OpenAI-style list); GET /health: liveness.

Errors are {"error": {"message", "type", "field"}, "detail"} with a 4xx status
for bad input (413 for too many documents or too large a body).

Safety: binds 127.0.0.1 unless --host says otherwise. --api-key (or the
TANSAKU_API_KEY environment variable, which keeps the key out of `ps`) requires
"Authorization: Bearer KEY" on every endpoint except /health and the API docs.
Inference runs on --workers-threads dedicated threads (default 1) with
(CPUs - 1) / --workers-threads torch threads each (--torch-threads), so the
model never oversubscribes the machine and one CPU stays free for HTTP: /health
answers while the model is busy. Up to --max-queue further requests wait in
order; beyond that, 503 with Retry-After."""

SERVE_EPILOG = """\
examples:
  tansaku serve my-index --reranker /models/japanese-reranker-xsmall
  TANSAKU_API_KEY=secret tansaku serve --no-index --reranker BAAI/bge-reranker-v2-m3 --port 9000

  curl -s localhost:8080/v1/rerank -H 'Content-Type: application/json' \\
      -d '{"query": "富士山の高さ", "documents": ["富士山は3776m", "東京の人口"], "top_n": 1}'
  curl -s localhost:8080/rerank -H 'Content-Type: application/json' \\
      -d '{"query": "富士山の高さ", "texts": ["富士山は3776m", "東京の人口"], "return_text": true}'
  curl -s localhost:8080/v1/search -H 'Content-Type: application/json' \\
      -d '{"query": "検索エンジンの仕組み", "top_n": 3, "mode": "bm25"}'
  curl -s localhost:8080/v1/search -H 'Content-Type: application/json' \\
      -d '{"query": "日本の料理", "filter": {"category": "food", "year": {"$gte": 2020}}}'
  curl -s localhost:8080/v1/models -H "Authorization: Bearer $TANSAKU_API_KEY"

  python: cohere.ClientV2(api_key="secret", base_url="http://127.0.0.1:8080").rerank(
              model="japanese-reranker-xsmall", query=..., documents=[...])
          litellm.rerank(model="cohere/japanese-reranker-xsmall", api_base="http://127.0.0.1:8080",
                         api_key="secret", query=..., documents=[...])
"""


def add_serve(sub: argparse._SubParsersAction) -> None:
    """Register ``tansaku serve`` (see :data:`SERVE_DESCRIPTION`)."""
    p = sub.add_parser(
        "serve",
        help="serve search and Cohere/Jina/TEI-compatible reranking over HTTP",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
    )
    p.add_argument(
        "index", nargs="?", type=Path, help="index directory served by POST /v1/search (or give --no-index)"
    )
    p.add_argument(
        "--no-index", action="store_true", help="no index: serve only the rerank endpoints (needs --reranker)"
    )
    g = p.add_argument_group("reranking")
    g.add_argument(
        "--reranker",
        default="none",
        help="cross-encoder: a hub id or a local model directory; also reranks "
        "/v1/search results. 'none' (default): no rerank stage and no rerank "
        "endpoints",
    )
    g.add_argument(
        "--model-name",
        help="name clients use in the 'model' field and see in /v1/models (default: "
        "the hub id, or the model directory's name)",
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="max tokens per (query, document) input; longer documents are scored "
        "as the best of overlapping windows (default: 512)",
    )
    g.add_argument("--rerank-batch-size", type=int, default=32, help="inputs per model call (default: 32)")
    g.add_argument(
        "--max-chunks-per-doc",
        type=int,
        default=8,
        help="windows scored per long document; a request's max_chunks_per_doc can "
        "lower it, not raise it (default: 8)",
    )
    from ..cli.main import add_quantize_option

    add_quantize_option(g)
    g = p.add_argument_group("HTTP server")
    g.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default: {DEFAULT_HOST}, this machine only; use "
        "0.0.0.0 only behind a firewall and with an API key)",
    )
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    g.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set; "
        "prefer the variable, command lines are visible to other users)",
    )
    g.add_argument(
        "--max-documents",
        type=int,
        default=DEFAULT_MAX_DOCUMENTS,
        help="most documents per rerank request, and the largest k of a search; "
        f"more is a 413 (default: {DEFAULT_MAX_DOCUMENTS})",
    )
    g.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body, checked before parsing; more is a 413 "
        f"(default: {DEFAULT_MAX_BODY_BYTES} = 10 MiB)",
    )
    g.add_argument(
        "--workers-threads",
        type=int,
        default=1,
        help="model calls run at once, each on its own thread (default: 1, the "
        "best on a small CPU machine; more helps with a GPU or many cores)",
    )
    g.add_argument(
        "--torch-threads",
        type=int,
        help="torch intra-op threads (default: (CPUs - 1) / --workers-threads, at "
        "least 1: one CPU stays free for HTTP and tokenization)",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests that may wait for the model; more get 503 (default: {DEFAULT_MAX_QUEUE})",
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: info)",
    )
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the index and reranker, then serve until interrupted (errors: TansakuError)."""
    _check_serve_args(args)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    reranker = _load_reranker(args)
    searcher = None
    if not args.no_index:
        from ..api import open_index

        searcher = open_index(args.index, reranker=reranker)
    if reranker is not None:
        threads = limit_torch_threads(args.workers_threads, args.torch_threads)
        _say(f"{args.workers_threads} inference thread(s), {threads} torch thread(s) each")
    app = create_app(
        searcher,
        reranker,
        api_key=api_key,
        max_documents=args.max_documents,
        max_body_bytes=args.max_body_bytes,
        model_name=args.model_name,
        worker_threads=args.workers_threads,
        max_queue=args.max_queue,
    )
    if args.host not in _LOOPBACK_HOSTS and not api_key:
        _say(
            f"warning: listening on {args.host} without an API key; anyone who can reach "
            "this port can use it (set --api-key or TANSAKU_API_KEY)"
        )
    import uvicorn

    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False)
    finally:
        if searcher is not None:
            searcher.close()
    return 0


def _check_serve_args(args: argparse.Namespace) -> None:
    if args.no_index == (args.index is not None):
        raise TansakuError(
            "give an INDEX directory, or --no-index for a rerank-only server"
            if args.index is None
            else "give either INDEX or --no-index, not both"
        )
    if args.no_index and args.reranker.lower() == "none":
        raise TansakuError("--no-index needs --reranker: there would be nothing to serve")
    for name in (
        "port",
        "max_documents",
        "max_body_bytes",
        "workers_threads",
        "max_queue",
        "max_length",
        "rerank_batch_size",
        "max_chunks_per_doc",
        "torch_threads",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TansakuError(f"--{name.replace('_', '-')} must be at least 1")
    if args.api_key is not None and not args.api_key.strip():
        raise TansakuError("--api-key is empty")


def _load_reranker(args: argparse.Namespace) -> Any | None:
    if args.reranker.lower() == "none":
        return None
    from tansaku.rerank import CrossEncoderReranker

    _say(f"loading reranker {args.reranker}")
    return CrossEncoderReranker(
        args.reranker,
        max_length=args.max_length,
        batch_size=args.rerank_batch_size,
        quantize=args.quantize,
        max_chunks_per_doc=args.max_chunks_per_doc,
    )


def limit_torch_threads(workers: int, threads: int | None = None) -> int:
    """Set torch's intra-op threads (``threads``, or a share of the CPUs) and return the number.

    The default keeps one CPU for the event loop, tokenization and JSON, and splits the rest
    between the ``workers`` concurrent model calls: (CPUs - 1) // workers, at least 1. On a
    2-core machine that is 1 thread: two spinning torch threads per call fight the HTTP side
    (and anything else on the machine) and were several times slower under load.
    """
    import torch

    if threads is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, (cpus - 1) // workers)
    torch.set_num_threads(threads)
    return threads


def _say(message: str) -> None:
    print(f"tansaku: {message}", file=sys.stderr, flush=True)
