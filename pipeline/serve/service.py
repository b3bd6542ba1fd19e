"""The loaded reranker as the API sees it, and the inference threads it runs on.

:class:`RerankService`: public name and aliases (the ``model`` field), token counting for
``usage``, ``max_tokens_per_doc`` truncation and per-request ``max_chunks_per_doc``.
:class:`InferenceQueue`: a small dedicated thread pool, so the event loop (and ``/health``)
stays responsive while requests queue for the model; :func:`limit_torch_threads` sizes torch
for it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from tansaku.index.errors import TansakuError
from tansaku.rerank.base import ModelReranker, Reranker, ranking, reranker_name

from .errors import ApiError
from .guards import request_timed_out, server_busy
from .model_names import ModelNames

T = TypeVar("T")


@dataclass(frozen=True)
class RerankOutcome:
    """Ranked ``(request index, score)`` pairs, best first, and the input tokens counted.

    Scores are sigmoid scores in [0, 1]; ``raw`` holds the logits they come from, in the same
    order, only when raw scores were asked for.
    """

    ranked: list[tuple[int, float]]
    tokens: int
    raw: list[float] | None = None


class RerankService:
    """A loaded reranker plus what the API needs around it.

    Public name and aliases (for the ``model`` field), token counting with the reranker's own
    tokenizer (for ``usage``), ``max_tokens_per_doc`` truncation, and per-request
    ``max_chunks_per_doc`` (a shallow copy of the reranker sharing its weights).
    """

    def __init__(
        self,
        reranker: Reranker,
        name: str | None = None,
        *,
        strict_model_name: bool = False,
        on_scored: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.reranker = reranker
        # told (documents, tokens, seconds) after each model call, e.g. ServerMetrics.observe_rerank
        self.on_scored = on_scored
        # A model-backed reranker also gives token counts, windows and raw logits.
        self.model = reranker if isinstance(reranker, ModelReranker) else None
        self.source = reranker_name(reranker)
        self.name = name or _public_name(self.source)
        self.aliases = frozenset(a for a in (self.name, self.source, Path(self.source).name) if a)
        self.names = ModelNames(self.name, self.aliases, strict_model_name)
        self.tokenizer: Any = self.model.tokenizer if self.model else None
        self.max_length = self.model.max_length if self.model else None
        self.max_chunks = self.model.max_chunks_per_doc if self.model else None
        self._pair_specials = _pair_specials(self.tokenizer)
        self._variants: dict[tuple[int | None, str], Reranker] = {}
        self._lock = threading.Lock()

    def check_model(self, model: str | None) -> None:
        """Accept any name; with ``strict_model_name`` only none (or ""), the public name, the
        source id/directory or its basename (see :mod:`.model_names`)."""
        self.names.check(model)

    def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        raw: bool = False,
        max_chunks: int | None = None,
        max_tokens: int | None = None,
        truncation_side: Literal["right", "left"] = "right",
    ) -> RerankOutcome:
        """Score and rank ``texts`` (runs on an inference thread).

        Ranked like the in-process reranker (ties keep request order); with ``raw`` on the
        logits, so both the logits and the scores come out in descending order even where
        float32 sigmoids saturate to equal scores. ``truncation_side="left"`` windows long
        documents from their end (TEI's ``truncation_direction: "Left"``).
        """
        texts, tokens = self.truncate_and_count(query, texts, max_tokens)
        reranker = self._variant(max_chunks, truncation_side)
        start = time.perf_counter()
        scores, logits = self._scores(reranker, query, texts, raw)
        if self.on_scored is not None:
            self.on_scored(len(texts), tokens, time.perf_counter() - start)
        order = ranking(scores if logits is None else logits, top_n)
        return RerankOutcome(
            [(i, float(scores[i])) for i in order],
            tokens,
            None if logits is None else [float(logits[i]) for i in order],
        )

    def truncate_and_count(
        self, query: str, texts: Sequence[str], max_tokens: int | None
    ) -> tuple[list[str], int]:
        """Cut documents to ``max_tokens`` tokens; count query + document + special tokens.

        The count is what the pairs hold before windowing (one query per document), the
        figure a hosted reranker bills; window overlap is not counted twice.
        """
        texts = list(texts)
        if self.tokenizer is None:
            if max_tokens:
                raise ApiError(
                    422, "max_tokens_per_doc needs a reranker with a tokenizer", field="max_tokens_per_doc"
                )
            return texts, 0
        query_tokens = len(self._encode([query])["input_ids"][0])
        offsets = bool(max_tokens) and bool(getattr(self.tokenizer, "is_fast", False))
        encoded = self._encode(texts, offsets=offsets)
        total = 0
        for i, ids in enumerate(encoded["input_ids"]):
            n = len(ids)
            if max_tokens and n > max_tokens:
                spans = encoded["offset_mapping"][i] if offsets else None
                texts[i] = self._cut(texts[i], max_tokens, spans)
                n = max_tokens
            total += query_tokens + n + self._pair_specials
        return texts, total

    def _encode(self, texts: list[str], *, offsets: bool = False) -> Any:
        # verbose=False: long documents are expected; they are cut or windowed, never fed whole
        kwargs: dict[str, Any] = {"add_special_tokens": False, "verbose": False}
        if offsets:
            kwargs["return_offsets_mapping"] = True
        return self.tokenizer(texts, **kwargs)

    def _cut(self, text: str, max_tokens: int, spans: Sequence[tuple[int, int]] | None) -> str:
        """``text`` up to the character where its ``max_tokens``-th token ends."""
        if spans is not None:
            return text[: spans[max_tokens - 1][1]]
        # slow tokenizers (e.g. MeCab-based BertJapaneseTokenizer) give no offsets: find the
        # longest prefix with at most max_tokens tokens by bisection
        low, high = 0, len(text)
        while low < high:
            mid = (low + high + 1) // 2
            if len(self._encode([text[:mid]])["input_ids"][0]) <= max_tokens:
                low = mid
            else:
                high = mid - 1
        return text[:low]

    def _variant(self, max_chunks: int | None, truncation_side: Literal["right", "left"]) -> Reranker:
        if self.max_chunks is None or self.model is None:
            if truncation_side != "right":
                raise ApiError(
                    422,
                    "truncation_direction 'Left' needs a model-backed reranker",
                    field="truncation_direction",
                )
            return self.reranker
        if not max_chunks or max_chunks >= self.max_chunks:
            max_chunks = None
        if max_chunks is None and truncation_side == "right":
            return self.reranker
        key = (max_chunks, truncation_side)
        with self._lock:
            variant = self._variants.get(key)
            if variant is None:
                # shares the model and tokenizer; only the window limit or side differs
                variant = self.model.with_options(
                    max_chunks_per_doc=max_chunks, truncation_side=truncation_side
                )
                self._variants[key] = variant
        return variant

    def _scores(
        self, reranker: Reranker, query: str, texts: list[str], raw: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores in [0, 1] and, when ``raw``, the logits they are the sigmoid of.

        ``relevance_score`` promises [0, 1] to every client, so a logit is never returned as
        a score: it goes to its own field.
        """
        pairs = [(query, text) for text in texts]
        if isinstance(reranker, ModelReranker):
            compute = reranker.compute_score
            if not raw:
                # explicit normalisation: sigmoid scores whatever activation the reranker has
                return np.asarray(compute(pairs, normalize=True), dtype=np.float32), None
            logits = np.asarray(compute(pairs, normalize=False), dtype=np.float32)
            return _sigmoid(logits), logits
        if raw:
            raise ApiError(422, "this reranker cannot return raw scores", field="raw_scores")
        scores = np.asarray(reranker.score(pairs), dtype=np.float32)
        if not np.all((scores >= 0) & (scores <= 1)):  # NaN fails too
            raise TansakuError(
                f"reranker {self.source!r} returned scores outside [0, 1] (e.g. "
                "logits); serve it with a compute_score(pairs, normalize=...) "
                "method or sigmoid scores"
            )
        return scores, None


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # torch's float32 sigmoid, as CrossEncoderReranker applies it: equal to its normalized scores
    import torch

    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits))).numpy()


def _public_name(source: str) -> str:
    # a local directory is named by its basename (clients need not know server paths)
    return Path(source).name if source and Path(source).is_dir() else source


def _pair_specials(tokenizer: Any) -> int:
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    try:
        return int(count(pair=True)) if count else 0
    except Exception:  # a tokenizer without a pair template: count content tokens only
        return 0


class InferenceQueue:
    """A small dedicated thread pool for model work, with a bound on waiting requests.

    The event loop only awaits futures, so ``/health`` answers while the model is busy.
    ``in_flight`` (running + waiting) is only touched on the event loop thread. With
    ``timeout`` (seconds), a request not answered that long after it joined the queue gets a
    504; its work is dropped if it has not started, and otherwise runs to its end on its
    thread (a model call cannot be interrupted), still counted in ``in_flight``.
    """

    def __init__(self, threads: int, max_queue: int, timeout: float | None = None) -> None:
        self.threads = threads
        self.max_queue = max_queue
        self.timeout = timeout
        self.in_flight = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="tansaku-inference")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on an inference thread; 503 when ``max_queue`` requests already wait."""
        if self.in_flight >= self.threads + self.max_queue:
            raise server_busy(self.in_flight)
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        abandoned = threading.Event()

        def work() -> T:
            if abandoned.is_set():  # timed out while waiting for a thread: never start it
                raise _Abandoned
            return fn(*args, **kwargs)

        future = loop.run_in_executor(self._executor, work)
        # released when the work really ends, even if the client went away meanwhile
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
            abandoned.set()
            raise request_timed_out(self.timeout or 0) from None

    def _release(self, future: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned or unawaited failure is not logged as lost

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Abandoned(Exception):
    """Raised instead of running work whose request already timed out."""


def limit_torch_threads(workers: int, threads: int | None = None) -> int:
    """Set torch's intra-op threads (``threads``, or a share of the CPUs) and return the number.

    The default keeps one CPU for the event loop, tokenization and JSON, and splits the rest
    between the ``workers`` concurrent model calls: (CPUs - 1) // workers, at least 1. On a
    2-core machine that is 1 thread: two spinning torch threads per call fight the HTTP side
    (and anything else on the machine) and were several times slower under load.
    """
    import torch

    if threads is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, (cpus - 1) // workers)
    torch.set_num_threads(threads)
    return threads
