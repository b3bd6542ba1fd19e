"""The result record every stage passes on: one document with its score."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

# The fields a hit may store only on their first read: the defaults of one ranked_hits
# made, or the corpus's values for one hydrated lazily (see DeferredFields); and the key of
# the instance dict that holds the latter's DeferredFields until then.
_DEFERRED = frozenset(("title", "text", "metadata"))
_SOURCE = "_deferred_fields"


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

    if not TYPE_CHECKING:  # (so that mypy still reports misspelt attributes of a Hit)

        def __getattr__(self, name: str) -> Any:
            # Reached only for an attribute the instance lacks: title, text or metadata of a
            # hit made by ranked_hits (defaults) or hydrated lazily (from the corpus), before
            # their first read. Either way they are stored then, in the dataclass's order.
            if name in _DEFERRED:
                values = self.__dict__
                source = values.get(_SOURCE)
                if source is not None:
                    source.fill(values)
                elif "title" not in values:
                    values.update(title=None, text=None, metadata={})
                if name in values:
                    return values[name]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # copy and pickle get every field's value, never the corpus a lazy hit would read from
        self.title  # noqa: B018  (stores a compact or lazy hit's unset fields)
        return dict(self.__dict__)


# The class-level defaults would answer an unset title or text (None) before __getattr__
# is asked; the dataclass __init__ keeps its own copy of the defaults.
del Hit.title, Hit.text

_new = object.__new__
_set = object.__setattr__
_COMPACT = 4  # fields a ranked_hits hit stores up front


def _hit(
    doc_id: str,
    score: float,
    rank: int,
    stage: str,
    title: str | None,
    text: str | None,
    metadata: Mapping[str, Any],
) -> Hit:
    # Hit(...) without the frozen dataclass's __init__ (an object.__setattr__ per field): the
    # same instance dict, in the same order, in about half the time.
    hit = _new(Hit)
    _set(
        hit,
        "__dict__",
        {
            "doc_id": doc_id,
            "score": score,
            "rank": rank,
            "stage": stage,
            "title": title,
            "text": text,
            "metadata": metadata,
        },
    )
    return hit


def ranked_hits(ids: Iterable[str], scores: Iterable[float], stage: str) -> list[Hit]:
    """``[Hit(id, score, rank, stage) ...]`` with ranks 1, 2, ... in the order given.

    The hits equal, print and serialise as those; they are built without the frozen dataclass
    __init__ and store title, text and metadata (None, None, a fresh dict) on their first
    read, in about 40% of the time: a retriever makes ``k`` hits per query, which cost more
    than its top-k kernel.
    """
    ids = list(ids)
    hits = [_new(Hit) for _ in ids]
    # filling each fresh instance dict in place beats building and assigning one (~25 % less)
    for rank, (hit, doc_id, score) in enumerate(zip(hits, ids, scores, strict=True), 1):
        values = hit.__dict__
        values["doc_id"] = doc_id
        values["score"] = score
        values["rank"] = rank
        values["stage"] = stage
    return hits


Rows = Mapping[str, tuple[str | None, str | None, Mapping[str, Any]]]
"""``{doc_id: (title, text, metadata)}``: what :class:`DeferredFields` fills hits with."""


class DeferredFields:
    """Title, text and metadata of a list of hits, fetched when the first of them is read.

    ``load(originals)`` returns their :data:`Rows` (ids it does not find are left out: those
    hits keep their original's fields). Thread-safe; loads at most once.
    """

    def __init__(self, load: Callable[[Sequence[Hit]], Rows], originals: Sequence[Hit]) -> None:
        self._load: Callable[[Sequence[Hit]], Rows] | None = load
        self._originals = list(originals)
        self._rows: Rows | None = None
        self._lock = threading.Lock()

    def load(self) -> Rows:
        """The rows (fetched now if they were not yet)."""
        with self._lock:
            if self._rows is None:
                assert self._load is not None
                self._rows = self._load(self._originals)
                self._load = None  # drop the corpus it read from
            return self._rows

    def fill(self, values: dict[str, Any]) -> None:
        """Set title, text and metadata in a lazy hit's instance dict ``values`` (a fresh
        metadata dict per hit); a read of each of a result's hits comes through here once."""
        rows = self._rows
        row = (self.load() if rows is None else rows).get(values["doc_id"])
        if row is None:
            original = next(h for h in self._originals if h.doc_id == values["doc_id"])
            row = (original.title, original.text, original.metadata)
        values["title"] = row[0]
        values["text"] = row[1]
        values["metadata"] = dict(row[2]) if row[2] else {}
        values.pop(_SOURCE, None)  # after the fields: a concurrent reader finds one or the other

    def hits(self) -> list[Hit]:
        """Lazy copies of the original hits: they read their fields from here when first asked."""
        hits = []
        for h in self._originals:
            values = h.__dict__.copy()  # a compact hit's: doc_id, score, rank, stage
            if len(values) != _COMPACT:
                values = {"doc_id": h.doc_id, "score": h.score, "rank": h.rank, "stage": h.stage}
            values[_SOURCE] = self
            hit = _new(Hit)
            _set(hit, "__dict__", values)
            hits.append(hit)
        return hits


def with_fields(hit: Hit, title: str | None, text: str | None, metadata: Mapping[str, Any]) -> Hit:
    """``hit.replace(title=..., text=..., metadata=...)``, faster (hydration makes one per hit)."""
    if type(hit) is not Hit:  # a subclass keeps its own class and fields
        return hit.replace(title=title, text=text, metadata=metadata)
    return _hit(hit.doc_id, hit.score, hit.rank, hit.stage, title, text, metadata)
