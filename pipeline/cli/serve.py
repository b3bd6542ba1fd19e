"""``tansaku serve``: its options, and loading the index and reranker to serve (the app is
:mod:`tansaku.pipeline.serve`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..serve.limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DOCUMENTS,
    DEFAULT_MAX_PAIRS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT,
    check_positive_ints,
    check_positive_numbers,
)
from .options import add_quantize_option, make_reranker, say
from .serve_ray import add_ray_options, run_on_ray

API_KEY_ENV = "TANSAKU_API_KEY"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_POSITIVE_OPTIONS = (
    "port",
    "max_documents",
    "max_body_bytes",
    "workers_threads",
    "max_queue",
    "max_length",
    "rerank_batch_size",
    "max_chunks_per_doc",
    "torch_threads",
    "max_pairs",
    "max_tokens",
    "max_connections",
)
_SECONDS_OPTIONS = ("request_timeout", "header_timeout", "body_timeout", "keep_alive_timeout")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})

SERVE_DESCRIPTION = """\
Serve INDEX and/or a reranker over HTTP for RAG stacks. Either INDEX or --no-index
(a pure rerank server, which then needs --reranker) must be given, so an index is
never left out by accident.

Endpoints (OpenAPI docs at http://HOST:PORT/docs):
  POST /v1/rerank, /v2/rerank, /rerank
        Cohere v1/v2 body: query, documents (strings or objects with "text"; with
        rank_fields, objects are ranked on "name: value" lines of those fields),
        model (optional; any name is accepted, as TEI does, and the answer names
        the model served; with --strict-model-name it must be --model-name, the
        hub id/directory or its basename, other names get a 404),
        top_n (default: all), return_documents, max_chunks_per_doc (v1; capped at --max-chunks-per-doc),
        max_tokens_per_doc (v2; each document cut to its first N tokens, then
        windowed as usual), raw_scores (each result also gets its logit as
        "raw_score"; relevance_score is always the sigmoid score in [0, 1]).
        Answer: {"id", "results": [{"index", "relevance_score", "raw_score"?,
        "document"?}],
        "meta", "usage", "model"}. The Cohere SDKs, LiteLLM (cohere/, jina_ai/)
        and other Cohere/Jina clients work unchanged with this server as base URL.
  POST /rerank with a TEI body (query, texts, raw_scores, return_text, truncate,
        truncation_direction "Right"/"Left", top_n; other fields are ignored, as
        TEI does) answers Text Embeddings Inference's bare array
        [{"index", "score", "text"?}].
  POST /infinity/rerank (also /infinity/v1/rerank): the Cohere body, answered in
        Infinity's shape ("document" is the ranked string): for Infinity clients
        such as LiteLLM's infinity/ provider, api_base http://HOST:PORT/infinity.
  POST /v1/search   query, top_n, retrieve_k, rerank_k, mode, filter → ranked hits
        (id, title, text, score, rank, stage, metadata), timings_ms, counts.
        filter: a metadata filter object, e.g. {"lang": "ja", "year": {"$gte": 2020}}
        ($eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $not).
  GET  /v1/models   what is loaded (OpenAI-style list); GET /health: liveness.
  GET  /metrics     Prometheus metrics: requests and latency per endpoint, stage
        latency (retrieve, fetch, rerank), queue depth, batch sizes, documents
        and tokens scored, index documents and version.
  GET  /docs, /redoc  API docs; their scripts are served locally (no internet).

Errors are {"error": {"message", "type", "field"}, "detail"} with a 4xx status
for bad input (413 for too many documents or too large a body).

Safety: binds 127.0.0.1 unless --host says otherwise. --api-key (or the
TANSAKU_API_KEY environment variable, which keeps the key out of `ps`) requires
"Authorization: Bearer KEY" on every endpoint except /health and the API docs.
Inference runs on --workers-threads dedicated threads (default 1) with
(CPUs - 1) / --workers-threads torch threads each (--torch-threads), so the
model never oversubscribes the machine and one CPU stays free for HTTP: /health
answers while the model is busy. Up to --max-queue further requests wait in
order; beyond that, 503 with Retry-After; a request not answered within
--request-timeout gets a 504. Each request is checked before any model work:
at most --max-pairs (query, document) pairs and --max-tokens estimated tokens,
else a 413 naming the option. Clients get --header-timeout seconds to send a
request head and --body-timeout more for its body (then 408); at most
--max-connections are open, and a new one closes the one that waited longest
for its client. Only IP addresses and localhost are accepted in the Host header
(a guard against DNS rebinding); with --host 0.0.0.0, pass the names clients
use with --allowed-hosts. More: docs/reliability.md."""

SERVE_EPILOG = """\
examples:
  tansaku serve my-index --reranker /models/japanese-reranker-xsmall
  TANSAKU_API_KEY=secret tansaku serve --no-index --reranker BAAI/bge-reranker-v2-m3 --port 9000
  tansaku serve big-index --ray --address auto --reranker BAAI/bge-reranker-v2-m3 \
      --reranker-replicas 2:8 --reranker-gpus 1      # a sharded index on a Ray cluster

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
        "--strict-model-name",
        action="store_true",
        help="answer 404 to a request naming another model; by default any 'model' "
        "is accepted (clients send their own defaults, e.g. Open WebUI's 'reranker')",
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
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT,
        help="seconds from joining the inference queue to the answer; longer is a 504 "
        "(work not yet started is dropped) (default: %(default)g)",
    )
    g.add_argument(
        "--max-pairs",
        type=int,
        default=DEFAULT_MAX_PAIRS,
        help="most (query, document) pairs the reranker scores per request: rerank "
        "documents/texts, a search's rerank_k; more is a 413 (default: %(default)d)",
    )
    g.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="most estimated tokens per request (UTF-8 bytes / 3, the query counted once "
        "per document); more is a 413 (default: %(default)d, top-100 reranking of "
        "512-token passages needs about a fifth)",
    )
    g.add_argument(
        "--allowed-hosts",
        action="append",
        metavar="NAMES",
        help="comma-separated Host names answered besides IP addresses and localhost "
        "(other Hosts get a 400: DNS rebinding); '*.example.com' for subdomains, '*' for "
        "any. With --host 0.0.0.0 pass the names clients use, e.g. --allowed-hosts "
        "search.internal (default: none; a --host name is added)",
    )
    g.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        help="seconds a client has to send a request head; then 408 and the connection "
        "is closed (default: %(default)g)",
    )
    g.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        help="seconds a client has, after the head, to send the whole body; then 408 (default: %(default)g)",
    )
    g.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=DEFAULT_KEEP_ALIVE_TIMEOUT,
        help="seconds an idle connection stays open between requests (default: %(default)g)",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections at most; a new one closes the one that waited longest for "
        "its client, or gets a 503 when all are being answered (default: %(default)d)",
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: info)",
    )
    add_ray_options(p)
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the index and reranker, then serve until interrupted (errors: TansakuError)."""
    _check_serve_args(args)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    options = _app_options(args, api_key)
    if args.ray:
        return run_on_ray(args, options)
    reranker = make_reranker(args, log=say)
    searcher = None
    if not args.no_index:
        from ..api import open_index

        searcher = open_index(args.index, reranker=reranker)
    if reranker is not None:
        from ..serve.service import limit_torch_threads

        threads = limit_torch_threads(args.workers_threads, args.torch_threads)
        say(f"{args.workers_threads} inference thread(s), {threads} torch thread(s) each")
    from ..serve.app import create_app
    from ..serve.connections import ConnectionLimits
    from ..serve.server import serve

    app = create_app(searcher, reranker, worker_threads=args.workers_threads, **options)
    if args.host not in _LOOPBACK_HOSTS and not api_key:
        say(
            f"warning: listening on {args.host} without an API key; anyone who can reach "
            "this port can use it (set --api-key or TANSAKU_API_KEY)"
        )
    if args.host in _WILDCARD_HOSTS and not args.allowed_hosts:
        say(
            "note: only IP addresses and localhost are accepted in the Host header; pass the "
            "names clients use with --allowed-hosts (or '*')"
        )
    _warn_if_few_descriptors(args.max_connections)
    limits = ConnectionLimits(
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
    )
    try:
        serve(app, host=args.host, port=args.port, limits=limits, log_level=args.log_level)
    finally:
        if searcher is not None:
            searcher.close()
    return 0


def _app_options(args: argparse.Namespace, api_key: str | None) -> dict[str, Any]:
    """The :func:`~tansaku.pipeline.serve.create_app` keywords the options give, in this
    process or at a Ray ingress (which sizes its own inference threads)."""
    return {
        "api_key": api_key,
        "max_documents": args.max_documents,
        "max_body_bytes": args.max_body_bytes,
        "model_name": args.model_name,
        "max_queue": args.max_queue,
        "strict_model_name": args.strict_model_name,
        "request_timeout": args.request_timeout,
        "max_pairs": args.max_pairs,
        "max_tokens": args.max_tokens,
        "allowed_hosts": allowed_hosts(args.host, args.allowed_hosts),
    }


def _check_serve_args(args: argparse.Namespace) -> None:
    from tansaku.index.errors import TansakuError

    if args.no_index == (args.index is not None):
        raise TansakuError(
            "give an INDEX directory, or --no-index for a rerank-only server"
            if args.index is None
            else "give either INDEX or --no-index, not both"
        )
    if args.no_index and args.reranker.lower() in ("", "none"):
        raise TansakuError("--no-index needs --reranker: there would be nothing to serve")
    check_positive_ints({name: getattr(args, name) for name in _POSITIVE_OPTIONS}, options=True)
    check_positive_numbers({name: getattr(args, name) for name in _SECONDS_OPTIONS}, options=True)
    if args.api_key is not None and not args.api_key.strip():
        raise TansakuError("--api-key is empty")


def allowed_hosts(host: str, names: list[str] | None) -> list[str]:
    """``--allowed-hosts`` values, plus ``host`` when it is a name (IP addresses always pass)."""
    import ipaddress

    values = list(names or ())
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host not in _WILDCARD_HOSTS:
            values.append(host)
    return values


def _warn_if_few_descriptors(max_connections: int) -> None:
    # each connection is a file descriptor; the index, the model and the logs need some too
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and max_connections + 64 > soft:
        say(
            f"warning: --max-connections {max_connections} is close to this process's limit of "
            f"{soft} open files; lower it or raise the limit (ulimit -n)"
        )
