"""Token-level building blocks for cross-encoder inputs: pair templates and document windows.

Working on token ids (not text) lets a long document be cut into exact, overlapping token
windows, and lets every (query, window) input be assembled without re-tokenizing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Probe texts used to discover a tokenizer's special-token layout; later ones are fallbacks
# for vocabularies that lack the first (an [UNK] probe would still work, but is ambiguous).
_PROBES: tuple[tuple[str, str], ...] = (("a", "b"), ("1", "2"), ("あ", "い"), ("x", "y"))


@dataclass(frozen=True)
class PairTemplate:
    """How a tokenizer wraps a pair: ``prefix + query + middle + document + suffix``.

    For BERT that is ``[CLS] q [SEP] d [SEP]`` with token types 0/1, for XLM-R
    ``<s> q </s></s> d </s>``. ``types`` (token type ids of prefix, middle, suffix, query
    tokens, document tokens) is None when the tokenizer cannot produce them.
    """

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int, int] | None = None

    @property
    def num_special(self) -> int:
        """Number of special tokens a pair adds."""
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(
        self, query_ids: Sequence[int], doc_ids: Sequence[int], *, token_types: bool = True
    ) -> dict[str, list[int]]:
        """Model features for one pair, identical to ``tokenizer(query, doc)`` when untruncated.

        ``token_type_ids`` is included when ``token_types`` is set and the template has them.
        """
        features = {
            "input_ids": [*self.prefix, *query_ids, *self.middle, *doc_ids, *self.suffix],
        }
        if token_types and self.types is not None:
            prefix_t, middle_t, suffix_t, query_t, doc_t = self.types
            features["token_type_ids"] = [
                *prefix_t,
                *[query_t] * len(query_ids),
                *middle_t,
                *[doc_t] * len(doc_ids),
                *suffix_t,
            ]
        return features

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> PairTemplate:
        """Discover the layout by encoding a probe pair with and without special tokens.

        Works for fast and slow (e.g. MeCab-based ``BertJapaneseTokenizer``) tokenizers alike,
        which transformers 5 no longer give a common ``build_inputs_with_special_tokens``.
        """
        for query, doc in _PROBES:
            template = _probe(tokenizer, query, doc)
            if template is not None:
                return template
        raise ValueError(
            f"could not work out how {type(tokenizer).__name__} joins a query and a document "
            "into one input (special-token layout); this tokenizer is not supported"
        )


def _probe(tokenizer: Any, query: str, doc: str) -> PairTemplate | None:
    query_ids = list(tokenizer(query, add_special_tokens=False)["input_ids"])
    doc_ids = list(tokenizer(doc, add_special_tokens=False)["input_ids"])
    if not query_ids or not doc_ids:
        return None
    # ask for segment ids even where the tokenizer would drop them by default; the caller
    # decides whether the model gets them
    encoded = tokenizer(query, doc, return_token_type_ids=True)
    full = list(encoded["input_ids"])
    nq, nd = len(query_ids), len(doc_ids)
    # the query is the first occurrence, the document the last one after it
    q_at = next((i for i in range(len(full) - nq + 1) if full[i : i + nq] == query_ids), None)
    if q_at is None:
        return None
    d_at = next((i for i in range(len(full) - nd, q_at + nq - 1, -1) if full[i : i + nd] == doc_ids), None)
    if d_at is None:
        return None
    types = None
    if "token_type_ids" in encoded:
        t = list(encoded["token_type_ids"])
        types = (tuple(t[:q_at]), tuple(t[q_at + nq : d_at]), tuple(t[d_at + nd :]), t[q_at], t[d_at])
    template = PairTemplate(
        prefix=tuple(full[:q_at]),
        middle=tuple(full[q_at + nq : d_at]),
        suffix=tuple(full[d_at + nd :]),
        types=types,
    )
    rebuilt = template.build(query_ids, doc_ids)
    if rebuilt["input_ids"] != full or (
        types is not None and rebuilt["token_type_ids"] != list(encoded["token_type_ids"])
    ):
        return None
    return template


def window_starts(doc_len: int, window: int, overlap: int, max_windows: int) -> list[int]:
    """Start offsets of up to ``max_windows`` windows of ``window`` tokens over a document.

    Consecutive windows share ``overlap`` tokens (clamped to half a window so windows always
    advance); windows stop once the document is covered. Always at least one window.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 token, got {window}")
    stride = window - min(max(overlap, 0), window // 2)
    starts = [0]
    while starts[-1] + window < doc_len and len(starts) < max_windows:
        starts.append(starts[-1] + stride)
    return starts
