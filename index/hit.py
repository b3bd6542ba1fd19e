"""The result record every stage passes on: one document with its score."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import count, repeat
from operator import attrgetter
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
_doc_id = attrgetter("doc_id")
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
    ids = ids if isinstance(ids, list) else list(ids)
    scores = scores if isinstance(scores, list) else list(scores)
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
    hits = list(map(_new, repeat(Hit, len(ids))))
    # filling each fresh instance dict in place beats building and assigning one (~25 % less)
    for rank, hit, doc_id, score in zip(count(1), hits, ids, scores):
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

    ``load(ids)`` returns the :data:`Rows` of the hits' ids (ids it does not find are left
    out: those hits keep their original's fields). Thread-safe; loads at most once. Give it
    its hits once, through :meth:`hits` (lazy copies) or :meth:`adopt` (the hits themselves
    made lazy).
    """

    def __init__(self, load: Callable[[Sequence[str]], Rows]) -> None:
        self._load: Callable[[Sequence[str]], Rows] | None = load
        self._ids: list[str] = []
        # per hit, what it keeps for an id the corpus lacks: the original, or None for a hit
        # adopted with its defaults (holding it here would make a cycle through the hit);
        # None for all of them
        self._originals: list[Hit | None] | None = None
        self._rows: Rows | None = None
        self._lock = threading.Lock()

    def load(self) -> Rows:
        """The rows (fetched now if they were not yet)."""
        with self._lock:
            if self._rows is None:
                assert self._load is not None
                self._rows = self._load(self._ids)
                self._load = None  # drop the corpus it read from
            return self._rows

    def fill(self, values: dict[str, Any]) -> None:
        """Set title, text and metadata in a lazy hit's instance dict ``values`` (a fresh
        metadata dict per hit); a read of each of a result's hits comes through here once."""
        rows = self._rows
        row = (self.load() if rows is None else rows).get(values["doc_id"])
        if row is None:
            row = self._original_fields(values["doc_id"])
        values["title"] = row[0]
        values["text"] = row[1]
        values["metadata"] = dict(row[2]) if row[2] else {}
        values.pop(_SOURCE, None)  # after the fields: a concurrent reader finds one or the other

    def _original_fields(self, doc_id: str) -> tuple[str | None, str | None, Mapping[str, Any]]:
        # an id the corpus lacks keeps the fields of its first hit: a compact one's defaults
        original = None if self._originals is None else self._originals[self._ids.index(doc_id)]
        if original is None or "title" not in original.__dict__ and _SOURCE not in original.__dict__:
            return None, None, {}
        return original.title, original.text, original.metadata

    def hits(self, originals: Sequence[Hit]) -> list[Hit]:
        """Lazy copies of ``originals``: they read their fields from here when first asked."""
        self._originals = list(originals)
        self._ids = list(map(_doc_id, originals))
        return [self._lazy_copy(h) for h in originals]

    def adopt(self, originals: Sequence[Hit]) -> list[Hit]:
        """``originals`` themselves made lazy, for a caller that holds the only references to
        them (it has just made them): each compact one (fields never read) starts reading its
        fields from here, the rest are copied as by :meth:`hits`. One object per hit instead
        of two; nobody can tell, as no one else can have read them."""
        hits = list(originals)
        self._ids = list(map(_doc_id, hits))
        copies = False
        for h in hits:
            values = h.__dict__
            if len(values) == _COMPACT:
                values[_SOURCE] = self
            else:
                copies = True
        # the usual list (all compact) takes only the tight loop above; a mixed one is sorted
        # out here (a hit listed twice was adopted on its first sight)
        adopted = [h.__dict__.get(_SOURCE) is self for h in hits] if copies else None
        self._originals = [None if a else h for h, a in zip(hits, adopted, strict=True)] if adopted else None
        if adopted:
            hits = [h if a else self._lazy_copy(h) for h, a in zip(hits, adopted, strict=True)]
        return hits

    def _lazy_copy(self, h: Hit) -> Hit:
        values = h.__dict__.copy()  # a compact hit's: doc_id, score, rank, stage
        if len(values) != _COMPACT:
            values = {"doc_id": h.doc_id, "score": h.score, "rank": h.rank, "stage": h.stage}
        values[_SOURCE] = self
        hit = _new(Hit)
        _set(hit, "__dict__", values)
        return hit


def with_fields(hit: Hit, title: str | None, text: str | None, metadata: Mapping[str, Any]) -> Hit:
    """``hit.replace(title=..., text=..., metadata=...)``, faster (hydration makes one per hit)."""
    if type(hit) is not Hit:  # a subclass keeps its own class and fields
        return hit.replace(title=title, text=text, metadata=metadata)
    return _hit(hit.doc_id, hit.score, hit.rank, hit.stage, title, text, metadata)
