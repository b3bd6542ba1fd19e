"""What the routes share: the loaded models, the limits and the inference queue."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .service import InferenceQueue, RerankService
from .work_limits import WorkLimits

if TYPE_CHECKING:
    from tansaku.pipeline.api import Searcher

    from .metrics import ServerMetrics


@dataclass
class ServerState:
    """What the routes share: the loaded models, limits and the inference queue.

    Not frozen: ``searcher`` and ``service`` are fixed, but the lock and the queue are live.
    """

    searcher: Searcher | None
    service: RerankService | None
    queue: InferenceQueue
    max_documents: int
    api_key: str | None
    started: float = field(default_factory=time.time)
    search_lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: ServerMetrics | None = None
    work: WorkLimits = field(default_factory=WorkLimits)

    def require_reranker(self) -> RerankService:
        if self.service is None:
            raise ApiError(
                409,
                "this server was started without a reranker (--reranker)",
                field="model",
                kind="not_available",
            )
        return self.service

    def require_searcher(self) -> Searcher:
        if self.searcher is None:
            raise ApiError(
                409,
                "this server has no index loaded (started with --no-index)",
                field=None,
                kind="not_available",
            )
        return self.searcher

    def run_search(self, query: str, overrides: dict[str, Any], flt: Any = None) -> tuple[Any, str]:
        # one search at a time: the index's SQLite connection and MeCab tagger are shared
        assert self.searcher is not None
        with self.search_lock:
            pipeline = self.searcher.pipeline(**overrides)
            return pipeline.search(query, filter=flt), str(pipeline.retriever.stage)
