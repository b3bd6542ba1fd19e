"""The result record every stage passes on: one document with its score."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One ranked document.

    ``doc_id`` is the corpus id, ``score`` the producing stage's score (higher is
    better), ``rank`` its 1-based position in that stage's list and ``stage`` the
    name of the stage that produced it (``"bm25"``, ``"dense"``, ``"hybrid"``,
    ``"rerank"``...). ``title``/``text``/``metadata`` are filled in when the hit
    has been joined with the corpus; a reranker needs ``text``.
    """

    doc_id: str
    score: float
    rank: int
    stage: str
    title: str | None = None
    text: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def indexed_text(self) -> str | None:
        """What BM25 indexed and a reranker reads: "title text" (see ``Record.indexed_text``)."""
        return f"{self.title} {self.text}" if self.title else self.text

    def replace(self, **changes: Any) -> Hit:
        """A copy with some fields changed (hits are immutable)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.doc_id,
            "score": self.score,
            "rank": self.rank,
            "stage": self.stage,
            "title": self.title,
            "text": self.text,
            "metadata": dict(self.metadata),
        }


def ranked(items: list[tuple[str, float]], stage: str) -> list[Hit]:
    """Hits from (doc_id, score) pairs already sorted best first."""
    return [Hit(doc_id, float(score), rank, stage) for rank, (doc_id, score) in enumerate(items, 1)]
