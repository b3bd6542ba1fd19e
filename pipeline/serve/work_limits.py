"""Work per request, checked before any model work: (query, document) pairs and tokens.

Bytes alone do not bound the work: a 10 MiB body of 10,000 short documents (or a search with
``retrieve_k = rerank_k = 10,000``) grew the server by ~1.6 GB and held the inference thread
for a minute. So every route that scores texts counts, before queueing anything, the pairs
the reranker would score and an estimate of the tokens it would read, and answers a 413
naming the limit and its option when either is over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ApiError
from .limits import DEFAULT_MAX_PAIRS, DEFAULT_MAX_TOKENS, check_positive_ints

BYTES_PER_TOKEN = 3
"""The token estimate: UTF-8 bytes / 3, about one token per Japanese character and three ASCII
characters per token, on the high side of real subword tokenizers (and far cheaper than
running one on a request that may be refused)."""


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: UTF-8 bytes / :data:`BYTES_PER_TOKEN`, rounded up."""
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


@dataclass(frozen=True)
class WorkLimits:
    """The most pairs and estimated tokens one request may make the server score."""

    max_pairs: int = DEFAULT_MAX_PAIRS
    """(query, document) pairs scored by the reranker per request (``--max-pairs``)."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Estimated tokens read per request, the query counted once per pair (``--max-tokens``)."""

    def __post_init__(self) -> None:
        check_positive_ints({"max_pairs": self.max_pairs, "max_tokens": self.max_tokens})

    def check_rerank(self, query: str, texts: Sequence[str], field: str) -> None:
        """413 unless scoring ``query`` against every one of ``texts`` fits (``field``: "texts"...)."""
        self._check_pairs(len(texts), field)
        query_tokens = estimate_tokens(query) * len(texts)
        text_tokens = sum(estimate_tokens(t) for t in texts)
        self._check_tokens(query_tokens + text_tokens, "query" if query_tokens > text_tokens else field)

    def check_search(self, query: str, rerank_k: int | None) -> None:
        """413 unless a search reranking ``rerank_k`` hits (None: no rerank stage) fits.

        The documents are the index's own (their length is the operator's choice); what a
        client controls is how many are scored and the query scored with each.
        """
        if rerank_k is not None:
            self._check_pairs(rerank_k, "rerank_k")
        self._check_tokens(estimate_tokens(query) * (1 + (rerank_k or 0)), "query")

    def _check_pairs(self, pairs: int, field: str) -> None:
        if pairs > self.max_pairs:
            raise ApiError(
                413,
                f"{field}: {pairs} (query, document) pairs to score is more than this server "
                f"scores per request ({self.max_pairs}, --max-pairs)",
                field=field,
                kind="payload_too_large",
            )

    def _check_tokens(self, tokens: int, field: str) -> None:
        if tokens > self.max_tokens:
            raise ApiError(
                413,
                f"{field}: about {tokens} tokens to score (UTF-8 bytes / {BYTES_PER_TOKEN}, the "
                f"query once per document) is more than this server reads per request "
                f"({self.max_tokens}, --max-tokens); send fewer or shorter texts",
                field=field,
                kind="payload_too_large",
            )
