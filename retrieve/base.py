"""The first-stage contract: a query in, the best ``k`` hits out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tansaku.index.checks import check_int
from tansaku.index.filters import FilterSpec
from tansaku.index.hit import Hit


@runtime_checkable
class Retriever(Protocol):
    """Returns candidates best first; ``stage`` names it in every hit it makes.

    ``filter`` (a parsed :class:`~tansaku.index.filters.Filter` or a plain dict such as
    ``{"lang": "ja"}``) restricts the candidates to matching documents before the top-k;
    fewer than ``k`` hits come back when fewer documents match.
    """

    stage: str

    def retrieve(self, query: str, k: int = 100, *, filter: FilterSpec = None) -> list[Hit]: ...

    def retrieve_batch(
        self, queries: Sequence[str], k: int = 100, *, filter: FilterSpec = None
    ) -> list[list[Hit]]: ...


def check_k(k: int) -> int:
    return check_int("k", k)
