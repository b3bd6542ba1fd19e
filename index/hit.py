"""The result record every stage passes on: one document with its score."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import count, repeat
from typing import TYPE_CHECKING, Any

# The fields a lazily hydrated hit reads from the corpus on first use (see DeferredFields),
# and the key of its instance dict that holds where from until then.
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
            # lazily hydrated hit before their first read.
            if name in _DEFERRED:
                values = self.__dict__
                source = values.get(_SOURCE)
                if source is not None:
                    source.fill(self)
                if name in values:
                    return values[name]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # copy and pickle get plain values, never the corpus a lazy hit would read from
        source = self.__dict__.get(_SOURCE)
        if source is not None:
            source.fill(self)
        return dict(self.__dict__)


# The class-level defaults would answer a lazy hit's unread title and text (None) before
# __getattr__ is asked; the dataclass __init__ keeps its own copy of the defaults.
del Hit.title, Hit.text


_new = object.__new__
_set = object.__setattr__


def _hit(
    doc_id: str,
    score: float,
    rank: int,
    stage: str,
    title: str | None = None,
    text: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Hit:
    # ``Hit(...)`` without the frozen dataclass's __init__ (seven object.__setattr__ calls):
    # the same instance dict in the same field order, in about half the time.
    # tests/test_hit.py keeps this in step with Hit's fields.
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
            "metadata": {} if metadata is None else metadata,
        },
    )
    return hit


def ranked_hits(ids: Iterable[str], scores: Iterable[float], stage: str) -> list[Hit]:
    """``[Hit(id, score, rank, stage) ...]`` with ranks 1, 2, ... in the order given.

    Equal to building each with :class:`Hit`, about twice as fast: a retriever makes ``k``
    hits per query, which cost more than its top-k kernel did.
    """
    return list(map(_hit, ids, scores, count(1), repeat(stage)))


class DeferredFields:
    """Title, text and metadata of a list of hits, fetched when the first of them is read.

    ``load`` returns ``{doc_id: (title, text, metadata)}`` for the ids it finds; a hit whose id
    it does not find keeps the fields of its ``original``. Thread-safe; loads at most once.
    """

    def __init__(
        self,
        load: Callable[[], Mapping[str, tuple[str | None, str | None, Mapping[str, Any]]]],
        originals: Sequence[Hit],
    ) -> None:
        self._load: Callable[[], Mapping[str, tuple[str | None, str | None, Mapping[str, Any]]]] | None = load
        self._originals = list(originals)
        self._rows: Mapping[str, tuple[str | None, str | None, Mapping[str, Any]]] | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._rows is not None

    def load(self) -> Mapping[str, tuple[str | None, str | None, Mapping[str, Any]]]:
        """The rows (fetched now if they were not yet)."""
        with self._lock:
            if self._rows is None:
                assert self._load is not None
                self._rows = self._load()
                self._load = None  # drop the corpus it read from
            return self._rows

    def fill(self, hit: Hit) -> None:
        """Set ``hit``'s title, text and metadata (a fresh metadata dict per hit)."""
        row = self.load().get(hit.doc_id)
        if row is None:
            original = next(h for h in self._originals if h.doc_id == hit.doc_id)
            row = (original.title, original.text, original.metadata)
        values = hit.__dict__
        values["title"], values["text"], values["metadata"] = row[0], row[1], dict(row[2])
        values.pop(_SOURCE, None)  # after the fields: a concurrent reader finds one or the other

    def hits(self) -> list[Hit]:
        """Lazy copies of the original hits: they read their fields from here when first asked."""
        hits = []
        for h in self._originals:
            hit = _new(Hit)
            _set(
                hit,
                "__dict__",
                {"doc_id": h.doc_id, "score": h.score, "rank": h.rank, "stage": h.stage, _SOURCE: self},
            )
            hits.append(hit)
        return hits


def with_fields(hit: Hit, title: str | None, text: str | None, metadata: Mapping[str, Any]) -> Hit:
    """``hit.replace(title=..., text=..., metadata=...)``, faster (hydration makes one per hit)."""
    if type(hit) is not Hit:  # a subclass keeps its own class and fields
        return hit.replace(title=title, text=text, metadata=metadata)
    return _hit(hit.doc_id, hit.score, hit.rank, hit.stage, title, text, metadata)
