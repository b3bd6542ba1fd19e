"""Dense retrieval: encode the query, search FAISS."""

from __future__ import annotations

from collections.abc import Sequence

from tansaku.index.errors import ConfigError
from tansaku.index.filters import FilterSpec
from tansaku.index.hit import Hit, ranked_hits
from tansaku.index.sharded import SearchIndex

from .base import check_k


class DenseRetriever:
    """Nearest documents by cosine similarity of the index's encoder vectors."""

    stage = "dense"

    def __init__(self, index: SearchIndex, *, nprobe: int | None = None) -> None:
        if index.dense is None:
            raise ConfigError(
                f"index {index.path} has no dense index: rebuild it with --encoder MODEL, "
                "or search with mode 'bm25'"
            )
        self.index = index
        self.nprobe = nprobe

    def retrieve(self, query: str, k: int = 100, *, filter: FilterSpec = None) -> list[Hit]:
        return self.retrieve_batch([query], k, filter=filter)[0]

    def retrieve_batch(
        self, queries: Sequence[str], k: int = 100, *, filter: FilterSpec = None
    ) -> list[list[Hit]]:
        """Nearest documents per query; a ``filter`` restricts them before the top-k (small
        allowed sets are scored exactly, so a selective filter loses no recall)."""
        check_k(k)
        if not queries:
            return []
        assert self.index.dense is not None
        mask = self.index.filter_mask(filter)
        if mask is not None and not mask.any():
            return [[] for _ in queries]
        vectors = self.index.encoder.encode_queries(list(queries))
        scores, positions = self.index.dense.search(vectors, k, nprobe=self.nprobe, allowed=mask)
        out = []
        for row_scores, row_pos in zip(scores, positions, strict=True):
            keep = row_pos >= 0
            out.append(ranked_hits(self.index.ids_at(row_pos[keep]), row_scores[keep].tolist(), self.stage))
        return out
