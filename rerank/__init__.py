"""The reranking stage: re-score first-stage candidates with a cross-encoder.

``CrossEncoderReranker`` wraps any sequence-classification cross-encoder that
sentence-transformers can load (Japanese BERT, XLM-R/bge-reranker, ModernBERT...), by hub id
or local directory. It batches by length and scores long documents as the best of their
overlapping token windows. ``Reranker`` is the protocol every caller types against;
``ModelReranker`` adds what a model-backed reranker offers (tokenizer, windows, logits).
"""

from __future__ import annotations

from tansaku.rerank.base import ModelReranker, RankedText, Reranker, rank_texts, ranked_hits, reranker_name
from tansaku.rerank.cross_encoder import DEFAULT_RERANKER, CrossEncoderReranker
from tansaku.rerank.loading import hub_offline, load_cross_encoder, looks_like_local_path

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
