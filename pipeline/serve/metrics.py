"""Prometheus metrics of one app: requests, stage latencies, the queue, the work done, the index.

Every app gets its own :class:`~prometheus_client.CollectorRegistry` (never the global one), so
several apps in one process (tests, or a host embedding tansaku) keep separate counts.
``GET /metrics`` answers the text exposition format; names start with ``tansaku_``:

- ``tansaku_http_requests_total{method, endpoint, status}`` and
  ``tansaku_http_request_duration_seconds{method, endpoint}`` (``endpoint`` is the route's
  path template; paths no route serves are counted as ``other``),
- ``tansaku_stage_duration_seconds{stage}``: ``rerank`` (the model's time, rerank endpoints
  and searches), ``retrieve`` and ``fetch`` (searches),
- ``tansaku_queue_depth`` (requests waiting for an inference thread) and
  ``tansaku_inference_in_flight`` (running + waiting),
- ``tansaku_rerank_batch_size`` (documents per model call), ``tansaku_documents_scored_total``
  and ``tansaku_tokens_scored_total`` (query + document tokens of the rerank endpoints; a
  search's rerank counts documents only),
- ``tansaku_index_documents`` and ``tansaku_index_version_timestamp_seconds`` (when the served
  index version was written: it changes with every build or update swapped in).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# the stages a search reports in its timings_ms that are worth a histogram ("total" is the request)
SEARCH_STAGES = ("retrieve", "fetch", "rerank")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
UNMATCHED = "other"


class ServerMetrics:
    """The collectors of one app, and the hooks the routes and the rerank service call."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tansaku_http_requests", "HTTP requests answered", ["method", "endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "tansaku_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stages = Histogram(
            "tansaku_stage_duration_seconds",
            "Time spent in a pipeline stage (retrieve, fetch, rerank)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tansaku_rerank_batch_size",
            "Documents scored per reranker call",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.documents = Counter("tansaku_documents_scored", "Documents scored by the reranker", registry=r)
        self.tokens = Counter(
            "tansaku_tokens_scored", "Query + document tokens scored by the rerank endpoints", registry=r
        )

    # -- live values ------------------------------------------------------------------------

    def watch_queue(self, in_flight: Callable[[], int], threads: int) -> None:
        """Queue gauges read from the inference queue at each scrape."""
        Gauge(
            "tansaku_inference_in_flight", "Model calls running or waiting", registry=self.registry
        ).set_function(in_flight)
        Gauge(
            "tansaku_queue_depth", "Requests waiting for an inference thread", registry=self.registry
        ).set_function(lambda: max(0, in_flight() - threads))

    def watch_index(self, index: Callable[[], Any]) -> None:
        """Index gauges read from the served index (``index()``) at each scrape."""
        Gauge(
            "tansaku_index_documents", "Documents in the served index", registry=self.registry
        ).set_function(lambda: len(index()))
        Gauge(
            "tansaku_index_version_timestamp_seconds",
            "When the served index version was written (Unix time; changes with every build or update)",
            registry=self.registry,
        ).set_function(lambda: index_version_time(index()))

    # -- hooks ------------------------------------------------------------------------------

    def observe_rerank(self, documents: int, tokens: int, seconds: float) -> None:
        """One reranker call of a rerank endpoint (called on the inference thread)."""
        self.stages.labels("rerank").observe(seconds)
        self.batch_size.observe(documents)
        self.documents.inc(documents)
        self.tokens.inc(tokens)

    def observe_search(self, timings_ms: Mapping[str, float], counts: Mapping[str, int]) -> None:
        """One search: its stage timings and, when it reranked, the documents scored."""
        for stage in SEARCH_STAGES:
            if stage in timings_ms:
                self.stages.labels(stage).observe(float(timings_ms[stage]) / 1000)
        reranked = int(counts.get("reranked", 0))
        if "rerank" in timings_ms and reranked:
            self.batch_size.observe(reranked)
            self.documents.inc(reranked)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def index_version_time(index: Any) -> float:
    """The served index version's ``created_at`` as Unix time (NaN when it has none)."""
    created = getattr(getattr(index, "manifest", None), "created_at", None)
    try:
        return datetime.fromisoformat(created).timestamp() if created else float("nan")
    except ValueError:
        return float("nan")


class MetricsMiddleware:
    """Counts and times every HTTP request (plain ASGI, outermost: guard rejections count too)."""

    def __init__(self, app: Any, *, metrics: ServerMetrics, paths: Callable[[], frozenset[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_noting_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            endpoint = self._endpoint(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(method, endpoint, str(status)).inc()
            self.metrics.latency.labels(method, endpoint).observe(time.perf_counter() - start)

    def _endpoint(self, scope: Mapping[str, Any]) -> str:
        # the route's template once the router matched it; a path no route serves is "other",
        # so clients probing random paths cannot grow the label set
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        return scope["path"] if scope["path"] in self.paths() else UNMATCHED
