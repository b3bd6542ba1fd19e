"""The endpoints: Cohere v1/v2, Jina and TEI reranking, search, models and health.

This module does not use ``from __future__ import annotations``: FastAPI must see real
classes in the route functions' annotations.
"""

import asyncio
import math
import os
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from tansaku.index.errors import ConfigError
from tansaku.index.filters import parse_filter

from ..search import default_rerank_k
from . import models as m
from .documents import document_texts, returned_document
from .errors import ApiError
from .guards import check_count, check_ks, check_unicode
from .infinity import add_infinity_routes
from .state import ServerState

# Cohere bills one search unit per query and 100 documents; reported the same way.
DOCUMENTS_PER_SEARCH_UNIT = 100


def add_routes(app: FastAPI, st: ServerState) -> None:
    """Register every endpoint on ``app``, serving from ``st``."""
    # documents the Bearer scheme in OpenAPI ("Authorize" in /docs); the check is GuardMiddleware's
    secured = [Depends(HTTPBearer(auto_error=False))] if st.api_key else []
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": m.ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503, 504)
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

    add_infinity_routes(app, st, common, cohere_rerank)

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
        await current_index(st)
        return JSONResponse(model_list(st))

    @app.get("/health", response_model=m.Health, tags=["info"], summary="Liveness (no key needed)")
    async def health() -> JSONResponse:
        await current_index(st)
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


async def cohere_rerank(st: ServerState, body: m.CohereRerankRequest, *, version: str) -> dict[str, Any]:
    """A Cohere-shaped rerank response for a :class:`~.models.CohereRerankRequest`."""
    service = st.require_reranker()
    service.check_model(body.model)
    check_count(len(body.documents), "documents", st.max_documents)
    check_unicode(body)
    texts = document_texts(body.documents, body.rank_fields)
    st.work.check_rerank(body.query, texts, "documents")
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
            result["document"] = returned_document(body.documents[index], texts[index])
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


async def tei_rerank(st: ServerState, body: m.TEIRerankRequest) -> list[dict[str, Any]]:
    """TEI's answer: ``[{"index", "score", "text"?}]`` sorted by descending score."""
    service = st.require_reranker()
    service.check_model(body.model)
    check_count(len(body.texts), "texts", st.max_documents)
    check_unicode(body)
    st.work.check_rerank(body.query, body.texts, "texts")
    # truncate: score only one window, the first ("Right") or the last ("Left"); otherwise long
    # texts get their best window, and the direction does not matter
    left = bool(body.truncate) and body.truncation_direction == "Left"
    outcome = await st.queue.run(
        service.rerank,
        body.query,
        body.texts,
        top_n=body.top_n,
        raw=body.raw_scores,
        max_chunks=1 if body.truncate else None,
        truncation_side="left" if left else "right",
    )
    scores = outcome.raw if outcome.raw is not None else [s for _, s in outcome.ranked]
    # TEI's own contract: with raw_scores, "score" is the logit
    return [
        {"index": index, "score": score, **({"text": body.texts[index]} if body.return_text else {})}
        for (index, _), score in zip(outcome.ranked, scores, strict=True)
    ]


async def run_search(st: ServerState, body: m.SearchRequest) -> dict[str, Any]:
    """Run the search pipeline for a :class:`~.models.SearchRequest`."""
    searcher = st.require_searcher()
    check_ks(((name, getattr(body, name)) for name in ("retrieve_k", "rerank_k", "top_n")), st.max_documents)
    check_unicode(body)
    config = searcher.config
    retrieve_k = body.retrieve_k or config.retrieve_k
    rerank_k = default_rerank_k(retrieve_k, body.rerank_k, cap=config.rerank_k)
    if rerank_k > retrieve_k:
        raise ApiError(
            422, f"rerank_k ({rerank_k}) cannot exceed retrieve_k ({retrieve_k})", field="rerank_k"
        )
    st.work.check_search(body.query, rerank_k if config.reranker is not None else None)
    if body.mode in ("dense", "hybrid") and searcher.index.dense is None:
        raise ApiError(422, f"mode {body.mode!r} needs a dense index; this index is BM25 only", field="mode")
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
    if st.metrics is not None:
        st.metrics.observe_search(result.timings_ms, result.counts)
    reranked = config.reranker is not None
    model = (st.service.name if st.service else config.reranker) if reranked else None
    return {
        "query": body.query,
        "mode": mode,
        "model": model,
        "hits": [_hit_json(hit) for hit in result.hits],
        "timings_ms": {k: round(float(v), 3) for k, v in result.timings_ms.items()},
        "counts": {k: int(v) for k, v in result.counts.items()},
        "warnings": list(result.warnings),
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


async def current_index(st: ServerState) -> None:
    """Open the index an update swapped in, so info routes report the version searches get.

    One ``stat`` when nothing changed; a reopen runs off the event loop.
    """
    if st.searcher is not None:
        await asyncio.to_thread(st.searcher.refresh)


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
