"""Sparse retrieval over the index's BM25 matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tansaku.index.filters import FilterSpec
from tansaku.index.hit import Hit, ranked_hits
from tansaku.index.sharded import SearchIndex

from .base import check_k


class BM25Retriever:
    """BM25Okapi top-k; only documents sharing a term with the query are returned."""

    stage = "bm25"

    def __init__(self, index: SearchIndex) -> None:
        self.index = index
        # Analyzers with an n-gram stream weigh its query terms against words; when every
        # token counts 1 the kernel counts them itself instead of calling back per token.
        weight = getattr(index.analyzer, "term_weight", None)
        self._weight = weight if getattr(index.analyzer, "weighs_terms", True) else None

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
        if len(queries) == 1:  # one search (the API's): the single-query kernel, no batch set-up
            return [self.retrieve(queries[0], k, filter=filter)]
        check_k(k)
        mask = self.index.filter_mask(filter)
        tokens = [self.index.analyzer.tokenize(q) for q in queries]
        return [
            self._hits(pos, scores)
            for pos, scores in self.index.bm25.top_k_batch(tokens, k, allowed=mask, weight=self._weight)
        ]

    def _hits(self, positions: np.ndarray, scores: np.ndarray) -> list[Hit]:
        return ranked_hits(self.index.ids_at(positions), scores.tolist(), self.stage)
