"""tansaku.pipeline.serve: search and Cohere/Jina/TEI-compatible reranking over HTTP (FastAPI).

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /v1/rerank``, ``POST /v2/rerank``, ``POST /rerank``: Cohere v1/v2 bodies (what the
  Cohere SDKs, LiteLLM's cohere and jina_ai providers, LangChain, LlamaIndex... send);
  ``POST /rerank`` also takes Text Embeddings Inference's body (``texts`` instead of
  ``documents``) and then answers TEI's bare sorted array.
- ``POST /infinity/rerank`` (and ``/infinity/v1/rerank``): the Cohere body in Infinity's
  answer shape (a returned ``document`` is a string).
- ``POST /v1/search``: the retrieve (+ rerank) pipeline over the loaded index.
- ``GET /v1/models`` (OpenAI-style list of what is loaded), ``GET /health`` and
  ``GET /metrics`` (Prometheus).

Modules: :mod:`.app` (``create_app``), :mod:`.routes` (the endpoints), :mod:`.infinity`
(Infinity's shape), :mod:`.models` (request/response bodies), :mod:`.documents` (what a rerank
request ranks), :mod:`.service` (the reranker and its inference threads), :mod:`.model_names`
(which ``model`` names pass), :mod:`.guards` (API key, sizes, a full queue), :mod:`.hosts`
(the ``Host`` check), :mod:`.work_limits` (pairs and tokens per request), :mod:`.errors`
(the one error shape), :mod:`.state` (what the routes share), :mod:`.metrics` (Prometheus),
:mod:`.docs_assets` (offline API docs) and :mod:`.limits` (defaults). :mod:`.server` runs the
app (``serve``) on uvicorn with the request deadlines and connection cap of
:mod:`.connections`. The ``tansaku serve`` command is :mod:`tansaku.pipeline.cli.serve`.

The names below are imported on first use, so that the command line can read
:mod:`.limits` for its ``--help`` without importing FastAPI, numpy or torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AllowedHosts": "hosts",
    "ApiError": "errors",
    "ConnectionLimits": "connections",
    "InferenceQueue": "service",
    "RerankOutcome": "service",
    "RerankService": "service",
    "ServerState": "state",
    "create_app": "app",
    "limit_torch_threads": "service",
    "serve": "server",
    "uvicorn_config": "server",
    "WorkLimits": "work_limits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
