"""Sparse retrieval over the index's BM25 matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tansaku.index.filters import FilterSpec
from tansaku.index.hit import Hit
from tansaku.index.sharded import SearchIndex

from .base import check_k


class BM25Retriever:
    """BM25Okapi top-k; only documents sharing a term with the query are returned."""

    stage = "bm25"

    def __init__(self, index: SearchIndex) -> None:
        self.index = index
        # Analyzers with an n-gram stream weigh its query terms against words.
        self._weight = getattr(index.analyzer, "term_weight", None)

    def retrieve(self, query: str, k: int = 100, *, filter: FilterSpec = None) -> list[Hit]:
        """The best ``k`` documents; a ``filter`` restricts them before the top-k (scores keep
        the whole corpus's statistics, so a document scores the same with or without it)."""
        check_k(k)
        mask = self.index.filter_mask(filter)
        return self._hits(
            *self.index.bm25.top_k(self.index.analyzer.tokenize(query), k, allowed=mask, weight=self._weight)
        )

    def retrieve_batch(
        self, queries: Sequence[str], k: int = 100, *, filter: FilterSpec = None
    ) -> list[list[Hit]]:
        """All queries through the parallel top-k kernel (same results as :meth:`retrieve`)."""
        check_k(k)
        mask = self.index.filter_mask(filter)
        tokens = [self.index.analyzer.tokenize(q) for q in queries]
        return [
            self._hits(pos, scores)
            for pos, scores in self.index.bm25.top_k_batch(tokens, k, allowed=mask, weight=self._weight)
        ]

    def _hits(self, positions: np.ndarray, scores: np.ndarray) -> list[Hit]:
        ids = self.index.ids_at(positions)
        return [
            Hit(doc_id, float(s), rank, self.stage)
            for rank, (doc_id, s) in enumerate(zip(ids, scores, strict=True), 1)
        ]
