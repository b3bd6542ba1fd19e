"""SearchPipeline: first-stage retrieval, then (optionally) cross-encoder reranking, timed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tansaku.index.checks import check_int
from tansaku.index.errors import ConfigError
from tansaku.index.filters import Filter, FilterSpec, parse_filter
from tansaku.index.hit import Hit
from tansaku.rerank.base import Reranker
from tansaku.retrieve import Retriever

from .rerank_fusion import check_fusion_weight, fuse

DEFAULT_RERANK_K = 100


def default_rerank_k(retrieve_k: int, rerank_k: int | None = None, cap: int = DEFAULT_RERANK_K) -> int:
    """``rerank_k`` when given, else ``cap`` shrunk to ``retrieve_k``.

    So a smaller retrieve_k alone shrinks the default rerank_k with it instead of failing the
    ``rerank_k <= retrieve_k`` check.
    """
    return rerank_k or min(cap, retrieve_k)


def check_ks(retrieve_k: int, rerank_k: int, top_n: int, *, reranking: bool = True) -> None:
    """Validate the k values of a two-stage search (clear errors, never silent clamping).

    Without a rerank stage ``rerank_k`` is unused, so it need not fit under ``retrieve_k``.
    """
    for name, value in (("retrieve_k", retrieve_k), ("rerank_k", rerank_k), ("top_n", top_n)):
        check_int(name, value)
    if reranking and rerank_k > retrieve_k:
        raise ConfigError(f"rerank_k ({rerank_k}) cannot exceed retrieve_k ({retrieve_k})")


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query, with per-stage timings (ms) and candidate counts.

    ``candidates`` is the first stage's full list (before reranking and top_n), its first
    stage's scores and ranks; those the search joined with the corpus (the returned ones, or
    the ``rerank_k`` a reranker read) carry their title, text and metadata.
    ``warnings`` says what may be wrong with the request, e.g. a filter on a field no
    document has (a typo such as ``yaer``), which otherwise silently returns nothing.
    """

    query: str
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    candidates: list[Hit] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "hits": [h.to_dict() for h in self.hits],
            "timings_ms": self.timings_ms,
            "counts": self.counts,
            "warnings": self.warnings,
        }


class SearchPipeline:
    """retrieve ``retrieve_k`` → rerank the best ``rerank_k`` → return ``top_n``.

    ``reranker=None`` is the explicit "no rerank stage" choice. ``prepare`` joins
    hits with their title/text/metadata between the stages (timed as ``fetch``); by
    default it is the retriever's index's ``hydrate`` when the retriever has one.
    ``filter_warnings`` says what may be wrong with a filter (fields no document has); by
    default the index's ``filter_warnings``, found through the retriever (a hybrid one's parts
    too).
    """

    def __init__(
        self,
        retriever: Retriever,
        reranker: Reranker | None = None,
        *,
        retrieve_k: int = 100,
        rerank_k: int = 100,
        top_n: int = 10,
        prepare: Callable[[list[Hit]], list[Hit]] | None = None,
        rerank_fusion_weight: float = 1.0,
        filter_warnings: Callable[[Filter], list[str]] | None = None,
    ) -> None:
        check_ks(retrieve_k, rerank_k, top_n, reranking=reranker is not None)
        self.retriever = retriever
        self.reranker = reranker
        # 1.0 = pure reranker order; below, reranker and first-stage scores are fused
        self.rerank_fusion_weight = check_fusion_weight(rerank_fusion_weight)
        self.retrieve_k = retrieve_k
        self.rerank_k = rerank_k
        self.top_n = top_n
        index = getattr(retriever, "index", None)
        self.prepare = prepare or getattr(index, "hydrate", None)
        parts = [retriever, *getattr(retriever, "retrievers", ())]
        found = (getattr(getattr(p, "index", None), "filter_warnings", None) for p in parts)
        self.filter_warnings = filter_warnings or next((f for f in found if f is not None), None)

    def search(self, query: str, *, filter: FilterSpec = None, **overrides: int) -> SearchResult:
        return self.search_batch([query], filter=filter, **overrides)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        retrieve_k: int | None = None,
        rerank_k: int | None = None,
        top_n: int | None = None,
        filter: FilterSpec = None,
    ) -> list[SearchResult]:
        """Search every query; k values may be overridden for this call.

        ``filter`` (a metadata filter: dict, JSON text or parsed) restricts the first stage's
        candidates, so every stage after it sees only matching documents. A filter field no
        document has is reported in each result's ``warnings``.
        """
        parsed = parse_filter(filter)
        check = self.filter_warnings
        warnings = check(parsed) if parsed is not None and check is not None else []
        retrieve_k = retrieve_k or self.retrieve_k
        rerank_k = rerank_k or self.rerank_k
        top_n = top_n or self.top_n
        check_ks(retrieve_k, rerank_k, top_n, reranking=self.reranker is not None)
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise ConfigError("query must be a non-empty string")
        t0 = time.perf_counter()
        # A retriever written before filters existed keeps working when none is given.
        extra = {} if parsed is None else {"filter": parsed}
        candidate_lists = self.retriever.retrieve_batch(list(queries), retrieve_k, **extra)
        retrieve_ms = (time.perf_counter() - t0) * 1000 / max(1, len(queries))
        results = []
        for query, candidates in zip(queries, candidate_lists, strict=True):
            timings = {"retrieve": retrieve_ms}
            counts = {"retrieved": len(candidates)}
            if self.reranker is None:
                t0 = time.perf_counter()
                hits, candidates = self._prepare(candidates, top_n)
                timings["fetch"] = (time.perf_counter() - t0) * 1000
            else:
                t0 = time.perf_counter()
                head, candidates = self._prepare(candidates, rerank_k)
                timings["fetch"] = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                hits = self._rerank(query, head, top_n)
                timings["rerank"] = (time.perf_counter() - t0) * 1000
                counts["reranked"] = len(head)
            counts["returned"] = len(hits)
            timings["total"] = sum(timings.values())
            results.append(SearchResult(query, hits, timings, counts, candidates, list(warnings)))
        return results

    def _prepare(self, candidates: list[Hit], n: int) -> tuple[list[Hit], list[Hit]]:
        """The first ``n`` candidates joined with their fields by ``prepare``, and the
        candidates with those in their place (so a result's candidates carry what the search
        fetched; kept as they were if ``prepare`` does not return one hit per hit)."""
        head = candidates[:n]
        if self.prepare is None:
            return head, candidates
        prepared = self.prepare(head)
        if len(prepared) != len(head):
            return prepared, candidates
        return prepared, prepared + candidates[n:]

    def _rerank(self, query: str, head: list[Hit], top_n: int) -> list[Hit]:
        # The reranker reads each hit's "title text" (Hit.indexed_text) itself.
        reranker = self.reranker
        assert reranker is not None  # only called with a rerank stage
        if self.rerank_fusion_weight < 1.0:
            return fuse(head, reranker.rerank(query, head), self.rerank_fusion_weight, top_n)
        return reranker.rerank(query, head, top_n=top_n)
