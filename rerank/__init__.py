"""The reranking stage: re-score first-stage candidates with a cross-encoder.

``CrossEncoderReranker`` wraps any sequence-classification cross-encoder that
sentence-transformers can load (Japanese BERT, XLM-R/bge-reranker, ModernBERT...), by hub id
or local directory. It batches by length and scores long documents as the best of their
overlapping token windows. ``Reranker`` is the protocol every caller types against;
``ModelReranker`` adds what a model-backed reranker offers (tokenizer, windows, logits).

The names below are imported on first use: the contract (``tansaku.rerank.base``) is cheap
to import, the model code loads torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tansaku.rerank.base import (
        ModelReranker,
        RankedText,
        Reranker,
        rank_texts,
        ranked_hits,
        reranker_name,
    )
    from tansaku.rerank.cross_encoder import DEFAULT_RERANKER, CrossEncoderReranker
    from tansaku.rerank.loading import hub_offline, load_cross_encoder, looks_like_local_path

_EXPORTS = {
    "ModelReranker": "base",
    "RankedText": "base",
    "Reranker": "base",
    "rank_texts": "base",
    "ranked_hits": "base",
    "reranker_name": "base",
    "DEFAULT_RERANKER": "cross_encoder",
    "CrossEncoderReranker": "cross_encoder",
    "hub_offline": "loading",
    "load_cross_encoder": "loading",
    "looks_like_local_path": "loading",
}

__all__ = [
    "DEFAULT_RERANKER",
    "CrossEncoderReranker",
    "ModelReranker",
    "RankedText",
    "Reranker",
    "hub_offline",
    "load_cross_encoder",
    "looks_like_local_path",
    "rank_texts",
    "ranked_hits",
    "reranker_name",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
