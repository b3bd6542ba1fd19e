"""The result record every stage passes on: one document with its score."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


def indexed_text(title: str | None, text: str) -> str:
    """What the analyzers and encoders index and a reranker reads: "title text".

    The one definition of that join (as the JQaRA evaluator does it): records, hits,
    training pairs and the integrations all call this.
    """
    return f"{title} {text}" if title else text


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
        """What BM25 indexed and a reranker reads: "title text" (None before hydration)."""
        return None if self.text is None else indexed_text(self.title, self.text)

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
