"""Sparse retrieval over the index's BM25 matrix."""

from __future__ import annotations

from collections.abc import Sequence

from tansaku.index import Index
from tansaku.index.hit import Hit

from .base import check_k


class BM25Retriever:
    """BM25Okapi top-k; only documents sharing a term with the query are returned."""

    stage = "bm25"

    def __init__(self, index: Index) -> None:
        self.index = index

    def retrieve(self, query: str, k: int = 100) -> list[Hit]:
        check_k(k)
        positions, scores = self.index.bm25.top_k(self.index.analyzer.tokenize(query), k)
        ids = self.index.ids_at(positions)
        return [Hit(doc_id, float(s), rank, self.stage)
                for rank, (doc_id, s) in enumerate(zip(ids, scores, strict=True), 1)]

    def retrieve_batch(self, queries: Sequence[str], k: int = 100) -> list[list[Hit]]:
        return [self.retrieve(q, k) for q in queries]
