"""The reranker as a Ray Serve deployment, and the proxy the ingress scores through.

:class:`RerankerReplica` loads one cross-encoder and scores pairs; concurrent requests are
gathered by ``@serve.batch`` into one model call per kind of score (a GPU scores a batch of
requests for little more than one). :class:`RemoteReranker` is a
:class:`~tansaku.rerank.base.ModelReranker` at the ingress: the HTTP app and the search
pipeline use it exactly as they use a local model. Its tokenizer (for ``usage`` token counts
and ``max_tokens_per_doc``) is loaded at the ingress; the model only in the replicas.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from ray import serve

from tansaku.index.hit import Hit
from tansaku.rerank.base import is_single_pair, rerank_by_score

from ..serve.errors import ApiError

# What a replica computes: sigmoid scores (score), logits (raw) or compute_score(normalize=True).
SCORE, RAW, NORMALIZED = "score", "raw", "normalized"
Side = Literal["right", "left"]
# (what to compute, windows per document (None: the replica's), truncation side, pairs)
Request = tuple[str, int | None, Side, list[tuple[str, str]]]


class RerankerReplica:
    """The Ray Serve deployment class: one loaded cross-encoder.

    ``options`` are :class:`~tansaku.rerank.CrossEncoderReranker` keywords (max_length,
    batch_size, max_chunks_per_doc, quantize, device); ``max_batch_size`` requests are
    scored together when they arrive within ``batch_wait_timeout_s`` (1: no batching).
    """

    def __init__(
        self,
        model: str,
        options: dict[str, Any],
        *,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.005,
        torch_threads: int | None = None,
    ) -> None:
        from tansaku.rerank import CrossEncoderReranker

        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.reranker = CrossEncoderReranker(model, **options)
        self._variants: dict[tuple[int | None, Side], Any] = {}
        self.score.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.score.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        r = self.reranker
        return {
            "model_name": r.model_name,
            "max_length": r.max_length,
            "max_chunks_per_doc": r.max_chunks_per_doc,
        }

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def score(self, requests: list[Request]) -> list[list[float]]:
        """Scores for each request's pairs; requests of one kind share one model call."""
        groups: dict[tuple[str, int | None, Side], list[int]] = {}
        for i, (kind, chunks, side, _) in enumerate(requests):
            groups.setdefault((kind, chunks, side), []).append(i)
        out: list[list[float]] = [[] for _ in requests]
        for (kind, chunks, side), members in groups.items():
            pairs = [pair for i in members for pair in requests[i][3]]
            values = self._compute(kind, chunks, side, pairs)
            start = 0
            for i in members:
                n = len(requests[i][3])
                out[i] = values[start : start + n]
                start += n
        return out

    def _compute(
        self, kind: str, chunks: int | None, side: Side, pairs: list[tuple[str, str]]
    ) -> list[float]:
        reranker: Any = self.reranker
        if chunks is not None or side != "right":
            key = (chunks, side)
            if key not in self._variants:
                self._variants[key] = reranker.with_options(max_chunks_per_doc=chunks, truncation_side=side)
            reranker = self._variants[key]
        if not pairs:
            return []
        if kind == SCORE:
            return [float(x) for x in np.asarray(reranker.score(pairs), dtype=np.float32)]
        return [float(x) for x in reranker.compute_score(pairs, normalize=kind == NORMALIZED)]


class RemoteReranker:
    """A :class:`~tansaku.rerank.base.ModelReranker` whose model runs in Ray Serve replicas."""

    def __init__(
        self,
        handle: Any,
        *,
        info: dict[str, Any] | None = None,
        max_chunks: int | None = None,
        truncation_side: Side = "right",
    ) -> None:
        self._handle = handle
        self._info = info if info is not None else handle.describe.remote().result()
        self._chunks = max_chunks
        self._side: Side = truncation_side
        self._tokenizer: Any = None

    @property
    def model_name(self) -> str:
        return str(self._info["model_name"])

    @property
    def max_length(self) -> int:
        return int(self._info["max_length"])

    @property
    def max_chunks_per_doc(self) -> int:
        return int(self._chunks or self._info["max_chunks_per_doc"])

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            # the same files the replicas load (a shared path or the hub cache)
            self._tokenizer = AutoTokenizer.from_pretrained(
                self.model_name, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"
            )
        return self._tokenizer

    def with_options(
        self, *, max_chunks_per_doc: int | None = None, truncation_side: Side | None = None
    ) -> RemoteReranker:
        variant = RemoteReranker(
            self._handle,
            info=self._info,
            max_chunks=max_chunks_per_doc or self._chunks,
            truncation_side=truncation_side or self._side,
        )
        variant._tokenizer = self._tokenizer
        return variant

    def _scores(self, kind: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
        from ray.serve.exceptions import BackPressureError

        try:
            return self._handle.score.remote(
                (kind, self._chunks, self._side, [tuple(p) for p in pairs])
            ).result()  # type: ignore[no-any-return]
        except BackPressureError:
            # the replicas' queues are full: the same 503 + Retry-After as the local queue
            raise ApiError(
                503,
                "reranker busy: every replica's queue is full; retry later",
                field=None,
                kind="server_busy",
                headers={"Retry-After": "1"},
            ) from None

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return np.asarray(self._scores(SCORE, pairs), dtype=np.float32)

    def compute_score(self, pairs: Any, normalize: bool = False) -> Any:
        single = is_single_pair(pairs)
        values = self._scores(NORMALIZED if normalize else RAW, [pairs] if single else list(pairs))
        return values[0] if single else values

    def rerank(self, query: str, docs: Sequence[Hit | str], top_n: int | None = None) -> list[Hit]:
        return rerank_by_score(self, query, docs, top_n)
