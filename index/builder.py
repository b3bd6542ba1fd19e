"""Building an index directory from records, crash-safely.

Everything is written into a temporary sibling directory; only a complete,
fsynced index is swapped in, so an interrupted or failed build leaves the
previous index (if any) untouched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from .analyzer import Analyzer, get_analyzer
from .atomic import checkpoint, staged
from .bm25 import BM25Index
from .build_config import BuildConfig, config_dict, default_bm25
from .build_encoder import encode_documents, prepare_encoder, resolve_encoder
from .build_sharded import write_sharded
from .checksums import file_table
from .corpus import Corpus
from .dense import DenseIndex
from .encoders import Encoder
from .errors import IngestError
from .manifest import BM25Section, BuildSection, DenseSection, IndexManifest, UpdateRecord
from .paths import check_index_target
from .records import Record
from .shard_builder import STAGING_CORPUS, shards_for_budget
from .sharded import ShardedIndex
from .store import BM25_DIR, CORPUS_FILE, DENSE_DIR, IDS_FILE, Index
from .tokenize_workers import resolve_workers, tokenize_all


def build_index(
    path: str | os.PathLike[str],
    records: Iterable[Record],
    config: BuildConfig = BuildConfig(),
    *,
    encoder: Encoder | str | None = None,
    progress: bool = True,
    total: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Index | ShardedIndex:
    """Build (or rebuild) the index at ``path`` from ``records`` and open it (sharded when
    ``config.shards`` or ``config.shard_docs`` asks for it).

    ``path`` may be new, an empty directory or an existing index (replaced); anything
    else there (a file, a folder of the user's) is refused with a
    :class:`~tansaku.index.errors.ConfigError` and left untouched. Symlinks are followed:
    the index is built where the link points, and the link stays a link.

    ``encoder`` (an :class:`Encoder` object, or a spec such as ``"none"``, ``"e5-small"`` or a
    model path) overrides ``config.encoder``. On any error the previous index at ``path`` is
    left as it was.
    """
    # Refuse a path holding the user's files before any slow work; again under the lock.
    path = check_index_target(path)
    say = log or (lambda _msg: None)
    analyzer = get_analyzer(config.analyzer)
    config, spec, encoder = prepare_encoder(config, encoder, say)
    timings: dict[str, float] = {}
    with staged(path, check=check_index_target) as tmp:
        t0 = time.perf_counter()
        corpus = Corpus(tmp / CORPUS_FILE)
        n = corpus.ingest(records, progress=progress, total=total)
        if n == 0:
            raise IngestError("no documents to index")
        timings["ingest"] = time.perf_counter() - t0
        checkpoint("ingest")
        if not config.sharded:
            shards, why = shards_for_budget(corpus, n, config.memory_budget)
            if shards > 1:
                say(f"shards: {shards} ({why})")
                config = replace(config, shards=shards)
        if config.sharded:
            corpus.close()
            os.replace(tmp / CORPUS_FILE, tmp / STAGING_CORPUS)
            spec, encoder = write_sharded(tmp, n, config, analyzer, spec, encoder, progress, say, timings)
        else:
            spec, encoder = _write_one(
                tmp, corpus, n, config, analyzer, spec, encoder, progress, say, timings
            )
    # A corpus encoder trained in the staged directory is reopened from its final place.
    reopen = ShardedIndex.open if config.sharded else Index.open
    return reopen(path, encoder=None if spec == "corpus" else encoder)


def _write_one(
    tmp: Path,
    corpus: Corpus,
    n: int,
    config: BuildConfig,
    analyzer: Analyzer,
    spec: str,
    encoder: Encoder | None,
    progress: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[str, Encoder | None]:
    """The files of one (unsharded) index over the ingested ``corpus``; (spec, encoder) used."""
    choice = ""
    t0 = time.perf_counter()
    ids: list[str] = []

    def texts_keeping_ids() -> Iterator[str]:
        for r in corpus.iter_records():
            ids.append(r.id)  # one pass over the corpus: ids are collected as it streams
            yield r.indexed_text

    texts = texts_keeping_ids()
    workers = resolve_workers(config.workers, n)
    bm25 = BM25Index.build(
        tokenize_all(analyzer, texts, total=n, progress=progress, workers=workers),
        config.bm25 or default_bm25(analyzer),
    )
    bm25.warm_up()
    timings["tokenize+bm25"] = time.perf_counter() - t0
    checkpoint("tokenize")

    if spec.lower() in ("auto", "corpus"):
        spec, choice, encoder = resolve_encoder(
            spec, n, tmp, corpus.iter_records, analyzer, config, progress, say, timings
        )
    dense = None
    if encoder is not None:
        t0 = time.perf_counter()
        vectors = encode_documents(
            encoder,
            (r.indexed_text for r in corpus.iter_records()),
            n,
            config.encode_batch_size,
            progress,
            say,
        )
        timings["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        checkpoint("faiss")
        say(f"FAISS: training/adding {n:,} vectors")
        dense = DenseIndex.build(vectors, config.faiss)
        say(f"FAISS: {dense.params.kind} ({dense.reason})")
        timings["faiss"] = time.perf_counter() - t0
    corpus.close()
    write_parts(
        tmp,
        ids,
        analyzer,
        bm25,
        dense,
        encoder,
        build=BuildSection(
            config=config_dict(config, encoder),
            seconds=timings,
            encoder_choice=choice or None,
            tokenize_workers=workers,
        ),
    )
    return spec, encoder


def write_parts(
    tmp: Path,
    ids: list[str],
    analyzer: Analyzer,
    bm25: BM25Index,
    dense: DenseIndex | None,
    encoder: Encoder | None,
    *,
    build: BuildSection | None,
    updates: tuple[UpdateRecord, ...] | None = None,
) -> None:
    """Write the id map, BM25 arrays, FAISS files and manifest (with every file's size and
    checksum) of a staged index."""
    np.save(tmp / IDS_FILE, np.asarray(ids, dtype=str))
    bm25_info = BM25Section.from_dict(bm25.save(tmp / BM25_DIR))
    dense_info = None
    if dense is not None:
        assert encoder is not None
        dense_info = DenseSection.from_dict({"encoder": encoder.to_config(), **dense.save(tmp / DENSE_DIR)})
    IndexManifest(
        counts={"docs": len(ids)},
        analyzer=analyzer.to_config(),
        bm25=bm25_info,
        dense=dense_info,
        build=build,
        updates=updates,
        files=file_table(tmp),
    ).save(tmp)
