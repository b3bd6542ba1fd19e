"""What a Ray build runs on the cluster's workers: tokenisers, shard writers, encoders.

Each worker writes its shard's files into the build's staging directory, which every node
must see at the same path (on one machine, local disk; on several, a shared file system).
The files are the ones the in-process build writes, made by the same functions
(:func:`~tansaku.index.shard_builder.count_shard`, :func:`~tansaku.index.shard_builder.weigh_shard`,
:func:`~tansaku.index.shard_builder.encode_shard`), so the index is the same.

Nothing here imports Ray: these are plain classes and functions that the driver hands to Ray.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tansaku.index.analyzer import analyzer_from_config
from tansaku.index.bm25 import BM25Params
from tansaku.index.build_config import BuildConfig
from tansaku.index.build_encoder import encode_documents, load_named_encoder
from tansaku.index.corpus import Corpus
from tansaku.index.encoders import Encoder
from tansaku.index.encoders.corpus_encoder import load_corpus_encoder
from tansaku.index.errors import TansakuError
from tansaku.index.paths import ENCODER_DIR
from tansaku.index.shard_builder import count_shard, encode_shard, weigh_shard
from tansaku.index.stats import CorpusStats
from tansaku.index.store import CORPUS_FILE

from .rows import records_of, texts_of

TOKENS = "tokens"


def node() -> str:
    """This worker's machine, for saying where a shard was written."""
    return socket.gethostname()


def _check_staging(tmp: Path) -> None:
    if not tmp.is_dir():
        raise TansakuError(
            f"the build's staging directory {tmp} is not on node {node()}: on a cluster of several "
            "machines, INDEX must be on storage every node mounts at the same path"
        )


class Tokeniser:
    """An actor of the tokenising pool: one analyzer (one MeCab tagger) per actor process."""

    def __init__(self, analyzer: dict[str, Any]) -> None:
        self.analyzer = analyzer_from_config(analyzer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokens = [self.analyzer.tokenize(text) for text in texts_of(batch)]
        return batch.append_column(TOKENS, pa.array(tokens, type=pa.list_(pa.string())))


def _batches(part: Any) -> Iterator[pa.Table]:
    """A shard's rows (a materialized Ray dataset), block by block, in order.

    Plain iteration of materialized blocks starts no Ray tasks: an operation here (even a
    column selection) would need CPUs that the shard writers themselves may be holding.
    """
    yield from part.iter_batches(batch_format="pyarrow", batch_size=None)


def write_shard(tmp: str, directory: str, part: Any, params: BM25Params) -> tuple[CorpusStats, str]:
    """Write one shard (its corpus, ids and term counts) from its tokenised rows ``part``.

    Returns the shard's own statistics and the node that wrote it.
    """
    _check_staging(Path(tmp))
    root = Path(tmp) / directory
    root.mkdir(parents=True)
    corpus = Corpus(root / CORPUS_FILE)
    try:
        corpus.ingest(records_of(_batches(part)), progress=False)
    finally:
        corpus.close()
    ids: list[str] = []

    def tokens() -> Iterator[list[str]]:
        for batch in _batches(part):
            ids.extend(batch.column("id").to_pylist())
            yield from batch.column(TOKENS).to_pylist()

    return count_shard(root, ids, tokens(), params), node()


def weigh(tmp: str, directory: str, params: BM25Params, stats: CorpusStats) -> str:
    """Weigh one shard's counts with the corpus's statistics; the node that did it."""
    _check_staging(Path(tmp))
    weigh_shard(Path(tmp) / directory, params, stats)
    return node()


@dataclass(frozen=True)
class EncoderRecipe:
    """How a worker gets the build's encoder: loaded by name, from the index being built
    (a corpus encoder, trained by the driver into the staging directory), or, for an
    encoder object handed to the Python API, the object itself (pickled by Ray)."""

    spec: str
    config: BuildConfig
    tmp: str
    encoder: Encoder | None = None

    def load(self) -> Encoder:
        if self.spec == "object":
            assert self.encoder is not None
            return self.encoder
        if self.spec == "corpus":
            return load_corpus_encoder(Path(self.tmp) / ENCODER_DIR)
        return load_named_encoder(self.spec, self.config)


class ShardEncoder:
    """An actor of the encoding pool: one encoder per actor, whole shards per call, encoded in
    the batches the in-process build uses (so the vectors are the same)."""

    def __init__(self, recipe: EncoderRecipe) -> None:
        _check_staging(Path(recipe.tmp))
        self.recipe = recipe
        self.encoder = recipe.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = self.recipe.config.encode_batch_size
        for directory, count in zip(batch["dir"].tolist(), batch["count"].tolist(), strict=True):
            encode_shard(
                Path(self.recipe.tmp) / directory,
                int(count),
                lambda texts, n: encode_documents(self.encoder, texts, n, size, False, _silent),
            )
        return {
            "dir": batch["dir"],
            "node": np.asarray([f"{node()} (pid {os.getpid()})"] * len(batch["dir"])),
        }


def _silent(_message: str) -> None:
    pass
