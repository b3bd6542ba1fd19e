"""Dense encoders: text → float32, L2-normalised vectors.

Every backend implements :class:`Encoder`; the manifest stores ``to_config()`` so
:func:`~tansaku.index.encoders.loading.encoder_from_config` can rebuild the same query
encoder when an index is opened. This module holds the protocol and the
sentence-transformers backend the others build on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import ModelLoadError
from .hub import load_failure, quiet_loading, resolve


class Encoder(Protocol):
    """Encodes queries and documents into the same normalised vector space."""

    name: str
    dim: int

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def to_config(self) -> dict[str, Any]: ...


# Prompt names sentence-transformers' encode_document() looks for, in its order.
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


class SentenceTransformerEncoder:
    """A sentence-transformers bi-encoder, by hub id or local directory.

    ``query_prefix``/``document_prefix`` are prepended to the texts (e5 expects
    ``"query: "``/``"passage: "``). ``None`` (the default) takes the model's own prompts
    (``prompts`` in its ``config_sentence_transformers.json``: ``query``; ``document``,
    ``passage`` or ``corpus``), or nothing when it declares none.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        batch_size: int = 32,
        device: str | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        source = resolve(model, what="encoder", option="--encoder")
        self.name = source.name
        self.batch_size = batch_size
        try:
            with quiet_loading():
                self.model = SentenceTransformer(
                    self.name, device=device, local_files_only=source.local_files_only
                )
        except Exception as exc:  # the library raises OSError, ValueError, HTTP errors...
            raise ModelLoadError(load_failure(source, exc, what="encoder", option="--encoder")) from exc
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        # A model that declares its prompts (e5's "query: "/"passage: ") is wrong without them.
        prompts = dict(getattr(self.model, "prompts", None) or {})
        self.query_prefix = (prompts.get("query") or "") if query_prefix is None else query_prefix
        # sentence-transformers >= 5 adds empty "query"/"document" entries: the first
        # non-empty one is the model's.
        self.document_prefix = (
            next((prompts[n] for n in DOCUMENT_PROMPTS if prompts.get(n)), "")
            if document_prefix is None
            else document_prefix
        )
        # Renamed in sentence-transformers 6; keep working with 3.x-5.x too.
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if not dim:
            raise ModelLoadError(f"model {self.name!r} does not report an embedding dimension")
        self.dim = int(dim)

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        vectors = self.model.encode(
            [prefix + t for t in texts],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.document_prefix)

    def to_config(self) -> dict[str, Any]:
        return {
            "type": "sentence-transformers",
            "model": self.name,
            "dim": self.dim,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "max_seq_length": self.model.max_seq_length,
        }
