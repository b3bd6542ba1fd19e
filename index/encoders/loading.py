"""Encoders by name: a CLI-style spec (``--encoder``) or the manifest entry of an index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, IndexFormatError
from ..paths import ENCODER_DIR
from .base import Encoder, SentenceTransformerEncoder
from .corpus_encoder import load_corpus_encoder
from .e5 import E5SmallEncoder


def load_encoder(spec: str | os.PathLike[str], **options: Any) -> Encoder:
    """An encoder from a CLI-style spec: ``e5-small`` (bundled), a hub id or a model directory."""
    spec = str(spec)
    if spec.lower() == "none":
        raise ConfigError("encoder 'none' means no dense index; do not load an encoder")
    if spec == "e5-small":
        return E5SmallEncoder(batch_size=options.get("batch_size", 32))
    return SentenceTransformerEncoder(spec, **options)


def encoder_from_config(config: dict[str, Any], base: Path | None = None) -> Encoder:
    """Rebuild the encoder an index was built with (for encoding queries)."""
    kind = config.get("type")
    if kind == "sentence-transformers":
        model = str(config["model"])
        if base is not None and config.get("bundled"):
            model = str(_inside(base, model))
        return SentenceTransformerEncoder(
            model,
            query_prefix=config.get("query_prefix", ""),
            document_prefix=config.get("document_prefix", ""),
            max_seq_length=config.get("max_seq_length"),
        )
    if kind == "e5-small":
        return E5SmallEncoder()
    if kind == "corpus":
        if base is None:
            raise ConfigError("a corpus encoder lives inside its index: open the index")
        return load_corpus_encoder(_inside(base, str(config.get("path", ENCODER_DIR))))
    raise ConfigError(f"unknown encoder type {kind!r} in the index manifest")


def _inside(base: Path, relative: str) -> Path:
    """``base / relative``, refused unless it stays inside ``base`` (an index's own model).

    A manifest is data: one edited to say ``../elsewhere`` must not load a model from outside
    the index it describes.
    """
    path = (base / relative).resolve()
    if path != base.resolve() and base.resolve() not in path.parents:
        raise IndexFormatError(
            f"index {base}: its manifest points the encoder at {relative!r}, outside the index; "
            "rebuild the index"
        )
    return path
