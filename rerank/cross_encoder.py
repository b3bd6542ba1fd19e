"""Cross-encoder reranking: length-sorted batching, long documents scored by their best window."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from tansaku.index.checks import check_int
from tansaku.index.errors import ConfigError, ModelLoadError
from tansaku.index.hit import Hit
from tansaku.rerank.base import is_single_pair, rerank_by_score
from tansaku.rerank.loading import load_cross_encoder
from tansaku.rerank.packing import pack_encoder
from tansaku.rerank.quantize import Quantize, check_quantize, quantize_int8
from tansaku.rerank.windows import PairTemplate, window_starts

logger = logging.getLogger(__name__)

DEFAULT_RERANKER = "hotchpotch/japanese-reranker-cross-encoder-xsmall-v1"

Activation = Literal["sigmoid", "none"]
_ACTIVATIONS = ("sigmoid", "none")
TruncationSide = Literal["right", "left"]
_TRUNCATION_SIDES = ("right", "left")


class CrossEncoderReranker:
    """Rerank documents with a sequence-classification cross-encoder (``Reranker`` protocol).

    Scores: for single-logit models ``sigmoid(logit)`` in [0, 1] (``activation="sigmoid"``,
    equal to ``sentence_transformers.CrossEncoder.predict``) or the raw logit
    (``activation="none"``). For multi-logit models the score is the probability of the
    *last* label (softmax), which by convention is "relevant"; its raw form is that label's
    log-odds, so ``sigmoid(raw) == score`` holds for every model.

    A (query, document) pair longer than ``max_length`` tokens is not truncated: the document
    is cut into overlapping token windows (``chunk_overlap`` shared tokens, at most
    ``max_chunks_per_doc`` windows, the rest ignored), each scored with the query, and the
    document gets its best window's score. ``truncation_side="left"`` lays the windows out
    from the document's end instead, so what is ignored is its start (TEI's
    ``truncation_direction: "Left"``; with ``max_chunks_per_doc=1`` the last window alone is
    scored). Queries longer than half of ``max_length`` are truncated to that half on this
    path. A Hit is scored on its ``indexed_text`` ("title text").

    On the CPU, BERT-layout encoders (BERT, RoBERTa, XLM-R, ELECTRA, e5) run their layers on
    the real tokens only, attention per pair at its own length (:mod:`tansaku.rerank.packing`):
    the same scores as the padded batch, ~1.3-1.5x faster on mixed-length pairs;
    ``unpad=False`` keeps the stock padded forward.

    ``quantize="int8"`` (CPU only) runs the encoder's query/key/value and FFN-input layers in
    int8 with per-token scales (see :mod:`tansaku.rerank.quantize`): ~1.3x faster again, scores
    within ~0.01 of float32 on a trained 6-layer reranker, ~0.07 on a 12-layer one
    (``scripts/bench_rerank.py`` measures both).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_RERANKER,
        *,
        max_length: int = 512,
        activation: Activation = "sigmoid",
        device: str | None = None,
        fp16: bool | None = None,
        batch_size: int = 32,
        max_chunks_per_doc: int = 8,
        chunk_overlap: int = 64,
        truncation_side: TruncationSide = "right",
        show_progress: bool = False,
        quantize: Quantize = "none",
        unpad: bool = True,
    ) -> None:
        check_int("max_length", max_length)
        check_int("batch_size", batch_size)
        check_int("max_chunks_per_doc", max_chunks_per_doc)
        check_int("chunk_overlap", chunk_overlap, minimum=0)
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        _check_truncation_side(truncation_side)
        self._device = _resolve_device(device)
        self._fp16 = (torch.device(self._device).type == "cuda") if fp16 is None else bool(fp16)
        check_quantize(quantize, self._device, self._fp16)
        self._quantize: Quantize = quantize
        self._model_name = os.fspath(model)
        self._activation: Activation = activation
        self._batch_size = batch_size
        self._max_chunks = max_chunks_per_doc
        self._chunk_overlap = chunk_overlap
        self._truncation_side: TruncationSide = truncation_side
        self._show_progress = show_progress

        cross_encoder = load_cross_encoder(model, device=self._device)
        if cross_encoder.tokenizer is None or cross_encoder.model is None:
            raise ConfigError(f"{self._model_name!r} is not a tokenizer + transformer model")
        self._tokenizer: Any = cross_encoder.tokenizer
        # A transformers PreTrainedModel; quantize_int8 returns it as a plain Module with the
        # same attributes (config, forward), which no single static type describes.
        self._model: Any = cross_encoder.model
        if self._fp16:
            self._model.half()
        self._model.eval()
        # CPU: the encoder layers skip padded positions (same scores; see packing.py). On a
        # GPU one padded batch is already a single kernel per step.
        self._packed = bool(unpad) and torch.device(self._device).type == "cpu" and pack_encoder(self._model)
        if quantize == "int8":
            self._model = quantize_int8(self._model)
        self._num_labels = int(self._model.config.num_labels)
        self._forward_params = set(inspect.signature(self._model.forward).parameters)
        try:
            self._template = PairTemplate.from_tokenizer(self._tokenizer)
        except ValueError as exc:
            raise ModelLoadError(f"reranker model {self._model_name!r}: {exc}") from exc
        self._token_types = self._wants_token_types()
        self._max_length = self._usable_length(max_length)
        if self._max_length - self._template.num_special < 2:
            raise ConfigError(
                f"max_length={self._max_length} leaves no room for a query and a document after "
                f"{self._template.num_special} special tokens"
            )
        pad_id = self._tokenizer.pad_token_id
        self._pad_id = int(pad_id if pad_id is not None else self._model.config.pad_token_id or 0)

    # -- public API ------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The hub id or directory the model was loaded from."""
        return self._model_name

    @property
    def max_length(self) -> int:
        """Tokens per model input (requested value capped at what the model supports)."""
        return self._max_length

    @property
    def device(self) -> str:
        """Device the model runs on, e.g. ``"cpu"`` or ``"cuda"``."""
        return self._device

    @property
    def fp16(self) -> bool:
        """Whether the model weights were cast to float16."""
        return self._fp16

    @property
    def quantize(self) -> Quantize:
        """``"int8"`` when the encoder's linear layers run in int8, else ``"none"``."""
        return self._quantize

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (e.g. for counting tokens)."""
        return self._tokenizer

    @property
    def max_chunks_per_doc(self) -> int:
        """At most this many windows of a long document are scored."""
        return self._max_chunks

    @property
    def truncation_side(self) -> TruncationSide:
        """``"right"``: windows from a long document's start; ``"left"``: from its end."""
        return self._truncation_side

    def with_options(
        self, *, max_chunks_per_doc: int | None = None, truncation_side: TruncationSide | None = None
    ) -> CrossEncoderReranker:
        """A copy with other per-request options, sharing the loaded model and tokenizer."""
        import copy

        variant = copy.copy(self)
        if max_chunks_per_doc is not None:
            check_int("max_chunks_per_doc", max_chunks_per_doc)
            variant._max_chunks = max_chunks_per_doc
        if truncation_side is not None:
            _check_truncation_side(truncation_side)
            variant._truncation_side = truncation_side
        return variant

    @property
    def activation(self) -> Activation:
        """``"sigmoid"`` (scores in [0, 1]) or ``"none"`` (raw logits)."""
        return self._activation

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self._model_name!r}, max_length={self._max_length}, "
            f"activation={self._activation!r}, device={self._device!r}, fp16={self._fp16}, "
            f"quantize={self._quantize!r}, "
            f"max_chunks_per_doc={self._max_chunks}, chunk_overlap={self._chunk_overlap}"
            # only when not the default, so the usual repr (a Searcher's reranker key) is unchanged
            + (f", truncation_side={self._truncation_side!r})" if self._truncation_side != "right" else ")")
        )

    def rerank(self, query: str, docs: Sequence[Hit | str], top_n: int | None = None) -> list[Hit]:
        """Score ``docs`` against ``query`` and return them as ranked rerank-stage Hits."""
        return rerank_by_score(self, query, docs, top_n)

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One score per ``(query, document)`` pair (float32), in input order."""
        raw = self._raw_scores(pairs)
        return raw if self._activation == "none" else _sigmoid(raw)

    @overload
    def compute_score(self, pairs: tuple[str, str], normalize: bool = False) -> float: ...

    @overload
    def compute_score(
        self, pairs: Sequence[tuple[str, str]] | Sequence[list[str]], normalize: bool = False
    ) -> list[float]: ...

    def compute_score(self, pairs: Any, normalize: bool = False) -> float | list[float]:
        """FlagEmbedding-style scoring: raw logits, or sigmoid-normalized with ``normalize``.

        A single ``(query, document)`` pair gives a float, a list of pairs a list of floats
        (even a one-pair list, unlike FlagEmbedding, so callers need no special case).
        """
        single = is_single_pair(pairs)
        raw = self._raw_scores([pairs] if single else pairs)
        values = (_sigmoid(raw) if normalize else raw).tolist()
        return values[0] if single else values

    # -- scoring ---------------------------------------------------------------------------

    def _raw_scores(self, pairs: Sequence[Any]) -> np.ndarray:
        checked = _check_pairs(pairs)
        if not checked:
            return np.empty(0, dtype=np.float32)
        units, owners = self._encode(checked)
        unit_scores = self._forward(units)
        # a document's score is its best window's score (a single unit for most documents)
        raw = np.full(len(checked), -np.inf, dtype=np.float32)
        np.maximum.at(raw, np.asarray(owners), unit_scores)
        return raw

    def _encode(self, pairs: list[tuple[str, str]]) -> tuple[list[dict[str, list[int]]], list[int]]:
        """Model inputs for all pairs; a long pair yields one input per document window."""
        template, limit = self._template, self._max_length
        unique_queries = list(dict.fromkeys(query for query, _ in pairs))
        query_ids = dict(zip(unique_queries, self._token_ids(unique_queries), strict=True))
        # a document sent twice in one request (e.g. for two queries) is tokenised once
        unique_docs = list(dict.fromkeys(doc for _, doc in pairs))
        doc_tokens = dict(zip(unique_docs, self._token_ids(unique_docs), strict=True))
        doc_ids = [doc_tokens[doc] for _, doc in pairs]
        room = limit - template.num_special
        units: list[dict[str, list[int]]] = []
        owners: list[int] = []
        for index, ((query, _), doc) in enumerate(zip(pairs, doc_ids, strict=True)):
            q_ids = query_ids[query]
            if len(q_ids) + len(doc) <= room:
                # fits: exactly what tokenizer(query, doc, truncation=True) would produce
                units.append(template.build(q_ids, doc, token_types=self._token_types))
                owners.append(index)
                continue
            # a long query must still leave the document at least half of each window
            q_ids = q_ids[: max(1, room // 2)]
            window = room - len(q_ids)
            for start in window_starts(len(doc), window, self._chunk_overlap, self._max_chunks):
                if self._truncation_side == "left":
                    # the same layout mirrored: counted from the end, the first window ends there
                    start = max(0, len(doc) - window - start)
                window_ids = doc[start : start + window]
                units.append(template.build(q_ids, window_ids, token_types=self._token_types))
                owners.append(index)
        return units, owners

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        # verbose=False: long documents are expected here, they are windowed, not fed whole
        encoded = self._tokenizer(texts, add_special_tokens=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    @torch.inference_mode()
    def _forward(self, units: list[dict[str, list[int]]]) -> np.ndarray:
        # longest first, so similar lengths share a batch (little padding) and an
        # out-of-memory error shows up on the first batch rather than the last
        order = np.argsort([-len(unit["input_ids"]) for unit in units], kind="stable")
        scores = np.empty(len(units), dtype=np.float32)
        starts = range(0, len(units), self._batch_size)
        if self._show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Reranking", unit="batch")
        for start in starts:
            batch_index = order[start : start + self._batch_size]
            batch = self._collate([units[i] for i in batch_index])
            logits = self._model(**batch).logits.float()
            scores[batch_index] = self._logit_scores(logits).cpu().numpy()
        return scores

    def _collate(self, units: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad a batch the way the tokenizer would (its pad id and padding side)."""
        width = max(len(unit["input_ids"]) for unit in units)
        left = getattr(self._tokenizer, "padding_side", "right") == "left"
        columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
        with_types = "token_type_ids" in units[0]
        if with_types:
            columns["token_type_ids"] = []
        for unit in units:
            pad = width - len(unit["input_ids"])
            fields = {
                "input_ids": (unit["input_ids"], self._pad_id),
                "attention_mask": ([1] * len(unit["input_ids"]), 0),
            }
            if with_types:
                fields["token_type_ids"] = (unit["token_type_ids"], 0)
            for key, (values, fill) in fields.items():
                columns[key].append([fill] * pad + values if left else values + [fill] * pad)
        return {
            key: torch.tensor(column, dtype=torch.long, device=self._device)
            for key, column in columns.items()
        }

    def _logit_scores(self, logits: torch.Tensor) -> torch.Tensor:
        if self._num_labels == 1:
            return logits[:, 0]
        # log-odds of the last label: sigmoid() of it is that label's softmax probability
        return logits[:, -1] - torch.logsumexp(logits[:, :-1], dim=-1)

    def _wants_token_types(self) -> bool:
        """Whether the model gets segment ids (0 for the query, 1 for the document).

        Yes when the tokenizer returns them, and also when the model has a segment embedding
        table but the tokenizer stopped returning them: transformers 5 dropped
        ``token_type_ids`` from ``BertJapaneseTokenizer``'s default outputs (used by most
        Japanese BERTs), so the document would be fed as segment 0, unlike in training.
        """
        if self._template.types is None or "token_type_ids" not in self._forward_params:
            return False
        by_default = "token_type_ids" in getattr(self._tokenizer, "model_input_names", ())
        segments = getattr(self._model.config, "type_vocab_size", 0)
        return by_default or (isinstance(segments, int) and segments > 1)

    def _usable_length(self, requested: int) -> int:
        """Cap ``requested`` at the tokenizer's and the position table's limits."""
        limits = [requested]
        tokenizer_limit = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            limits.append(tokenizer_limit)
        positions = getattr(self._model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions - _position_offset(self._model))
        usable = min(limits)
        if usable < requested:
            logger.info("max_length %d capped to %d for %s", requested, usable, self._model_name)
        return usable


def _position_offset(model: torch.nn.Module) -> int:
    """Positions a model reserves before the first token (XLM-R/RoBERTa start at pad + 1)."""
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            if isinstance(module.padding_idx, int):
                return module.padding_idx + 1
    return 0


def _sigmoid(raw: np.ndarray) -> np.ndarray:
    # torch's float32 sigmoid, as CrossEncoder.predict applies it, so scores match bit for bit
    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(raw))).numpy()


def _check_truncation_side(side: Any) -> None:
    if side not in _TRUNCATION_SIDES:
        raise ConfigError(f"truncation_side must be one of {_TRUNCATION_SIDES}, got {side!r}")


def _check_pairs(pairs: Sequence[Any]) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or is_single_pair(pairs):
        raise ConfigError("pass a sequence of (query, document) pairs, not a single pair")
    checked: list[tuple[str, str]] = []
    for position, pair in enumerate(pairs):
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(part, str) for part in pair)
        ):
            raise ConfigError(
                f"pair {position} must be a (query, document) tuple of strings, got {pair!r:.80}"
            )
        checked.append((pair[0], pair[1]))
    return checked


def _resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available here")
    return device
