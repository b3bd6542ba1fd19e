"""Infinity's rerank protocol: ``POST /infinity/rerank`` (and ``/infinity/v1/rerank``).

The body is the Cohere body the other rerank endpoints take; the answer is Infinity's shape,
where a returned ``document`` is the plain string that was ranked (Cohere's is an object with
``text``). Clients written for Infinity validate that shape (LiteLLM's ``infinity/`` provider
sends ``return_documents: true`` and rejects an object), so they are pointed at
``http://HOST:PORT/infinity``.

This module does not use ``from __future__ import annotations``: FastAPI must see real
classes in the route function's annotations.
"""

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from . import models as m
from .state import ServerState

INFINITY_PREFIX = "/infinity"


CohereRerank = Callable[..., Awaitable[dict[str, Any]]]


def add_infinity_routes(
    app: FastAPI, st: ServerState, common: dict[str, Any], cohere_rerank: CohereRerank
) -> None:
    """Register Infinity's rerank paths under :data:`INFINITY_PREFIX` on ``app``.

    ``common`` are the route options every data endpoint has (errors, security);
    ``cohere_rerank`` is :func:`.routes.cohere_rerank`, whose answer is reshaped.
    """

    async def rerank_infinity(body: m.CohereRerankRequest) -> JSONResponse:
        return JSONResponse(infinity_response(await cohere_rerank(st, body, version="1")))

    for path in (f"{INFINITY_PREFIX}/rerank", f"{INFINITY_PREFIX}/v1/rerank"):
        app.post(
            path,
            response_model=m.InfinityRerankResponse,
            tags=["rerank"],
            summary="Rerank documents (Infinity: returned documents are strings)",
            **common,
        )(rerank_infinity)


def infinity_response(cohere: dict[str, Any]) -> dict[str, Any]:
    """Infinity's answer from a Cohere-shaped one: ``document`` becomes the ranked text."""
    results = []
    for result in cohere["results"]:
        out = {k: v for k, v in result.items() if k != "document"}
        if "document" in result:
            out["document"] = result["document"]["text"]
        results.append(out)
    return {
        "object": "rerank",
        "id": cohere["id"],
        "created": int(time.time()),
        "model": cohere["model"],
        "results": results,
        "usage": cohere["usage"],
    }
