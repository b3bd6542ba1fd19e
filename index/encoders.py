"""Dense encoders: text → float32, L2-normalised vectors.

Every backend implements :class:`Encoder`; the manifest stores ``to_config()`` so
``load_encoder`` can rebuild the same query encoder when an index is opened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ConfigError, ModelLoadError


class Encoder(Protocol):
    """Encodes queries and documents into the same normalised vector space."""

    name: str
    dim: int

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def to_config(self) -> dict[str, Any]: ...


def hub_offline() -> bool:
    """True when the user asked huggingface_hub not to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def how_to_get_model(model: str, option: str) -> str:
    """The instructions a 'cannot load model' error ends with."""
    return (
        f"On a machine with internet access run `huggingface-cli download {model} --local-dir DIR` "
        f"(or `git clone https://huggingface.co/{model} DIR`), copy DIR here and pass "
        f"{option} DIR."
    )


def describe_load_failure(model: str, option: str, exc: BaseException) -> str:
    """A message naming the model, why it failed and how to pass a local path."""
    path = Path(model).expanduser()
    looks_local = path.is_absolute() or model.startswith((".", "~")) or path.exists()
    if looks_local and not path.exists():
        return f"cannot load model {model!r}: no such directory. Pass {option} with an existing model directory."
    if looks_local:
        return f"cannot load model {model!r} from {path}: {exc}"
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if hub_offline() else (
        "it could not be fetched from the Hugging Face hub (no network?) and is not cached")
    return f"cannot load model {model!r}: {why}. {how_to_get_model(model, option)}"


class SentenceTransformerEncoder:
    """A sentence-transformers bi-encoder, by hub id or local directory.

    ``query_prefix``/``document_prefix`` are prepended to the texts (e5 expects
    ``"query: "``/``"passage: "``).
    """

    def __init__(self, model: str | os.PathLike[str], *, query_prefix: str = "",
                 document_prefix: str = "", batch_size: int = 32, device: str | None = None,
                 max_seq_length: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = str(model)
        self.query_prefix = query_prefix
        self.document_prefix = document_prefix
        self.batch_size = batch_size
        try:
            self.model = SentenceTransformer(
                self.name, device=device, local_files_only=hub_offline()
            )
        except Exception as exc:  # the library raises OSError, ValueError, HTTP errors...
            raise ModelLoadError(describe_load_failure(self.name, "--encoder", exc)) from exc
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        # Renamed in sentence-transformers 6; keep working with 3.x-5.x too.
        get_dim = getattr(self.model, "get_embedding_dimension", None) or getattr(
            self.model, "get_sentence_embedding_dimension")
        dim = get_dim()
        if not dim:
            raise ModelLoadError(f"model {self.name!r} does not report an embedding dimension")
        self.dim = int(dim)

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        vectors = self.model.encode(
            [prefix + t for t in texts], batch_size=self.batch_size, convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.document_prefix)

    def to_config(self) -> dict[str, Any]:
        return {"type": "sentence-transformers", "model": self.name, "dim": self.dim,
                "query_prefix": self.query_prefix, "document_prefix": self.document_prefix,
                "max_seq_length": self.model.max_seq_length}


def load_encoder(spec: str | os.PathLike[str], **options: Any) -> Encoder:
    """An encoder from a CLI-style spec: a hub id or a local model directory."""
    spec = str(spec)
    if spec.lower() == "none":
        raise ConfigError("encoder 'none' means no dense index; do not load an encoder")
    path = Path(spec).expanduser()
    if path.exists():
        spec = str(path.resolve())
    return SentenceTransformerEncoder(spec, **options)


def encoder_from_config(config: dict[str, Any], base: Path | None = None) -> Encoder:
    """Rebuild the encoder an index was built with (for encoding queries)."""
    kind = config.get("type")
    if kind == "sentence-transformers":
        model = str(config["model"])
        if base is not None and config.get("bundled"):
            model = str(base / model)
        return SentenceTransformerEncoder(
            model, query_prefix=config.get("query_prefix", ""),
            document_prefix=config.get("document_prefix", ""),
            max_seq_length=config.get("max_seq_length"),
        )
    raise ConfigError(f"unknown encoder type {kind!r} in the index manifest")
