"""The sharded path of a build: shards written, then their dense part and manifest."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .analyzer import Analyzer
from .build_config import BuildConfig, config_dict, default_bm25
from .build_encoder import encode_documents, resolve_encoder
from .corpus import Corpus
from .encoders import Encoder
from .manifest import BuildSection, ShardEntry
from .records import Record
from .shard_builder import build_dense_shards, build_shards, encode_shard, write_sharded_manifest
from .stats import CorpusStats
from .store import CORPUS_FILE


def write_sharded(
    tmp: Path,
    n: int,
    config: BuildConfig,
    analyzer: Analyzer,
    spec: str,
    encoder: Encoder | None,
    progress: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[str, Encoder | None]:
    """The files of a sharded index over the ingested staging corpus (see
    :mod:`tansaku.index.shard_builder`); (spec, encoder) used."""
    entries, stats, workers = build_shards(
        tmp,
        n,
        analyzer=analyzer,
        params=config.bm25 or default_bm25(analyzer),
        shards=config.shards,
        shard_docs=config.shard_docs,
        workers=config.workers,
        progress=progress,
        say=say,
        timings=timings,
    )
    return finish_sharded(
        tmp,
        entries,
        stats,
        config,
        analyzer,
        spec,
        encoder,
        progress=progress,
        say=say,
        timings=timings,
        tokenize_workers=workers,
    )


# encode_shards(spec, encoder): every shard's vectors written (see shard_builder.encode_shard)
EncodeShards = Callable[[str, Encoder], None]


def finish_sharded(
    tmp: Path,
    entries: list[ShardEntry],
    stats: CorpusStats,
    config: BuildConfig,
    analyzer: Analyzer,
    spec: str,
    encoder: Encoder | None,
    *,
    progress: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
    tokenize_workers: int,
    encode_shards: EncodeShards | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, Encoder | None]:
    """A sharded index's dense part and manifest, once its shards' corpora and BM25 files are
    in ``tmp`` and ``stats`` are the corpus's; (spec, encoder) used.

    Resolves ``auto``/``corpus`` (a corpus encoder is trained here on every shard's corpus),
    encodes the shards with ``encode_shards(spec, encoder)`` (default: one after the other
    in this process), trains FAISS once and writes the manifest; ``extra`` goes into its
    build section.
    """
    choice = ""
    if spec.lower() in ("auto", "corpus"):
        corpora = [tmp / e.dir / CORPUS_FILE for e in entries]
        spec, choice, encoder = resolve_encoder(
            spec, stats.n_docs, tmp, lambda: all_records(corpora), analyzer, config, progress, say, timings
        )
    dense = None
    if encoder is not None:

        def in_process(_spec: str, enc: Encoder) -> None:
            for entry in entries:
                encode_shard(
                    tmp / entry.dir,
                    entry.count,
                    lambda texts, count: encode_documents(
                        enc, texts, count, config.encode_batch_size, progress, say
                    ),
                )

        run = encode_shards or in_process
        dense = build_dense_shards(
            tmp,
            entries,
            encoder,
            config.faiss,
            encode_shards=lambda enc: run(spec, enc),
            say=say,
            timings=timings,
        )[2]
    write_sharded_manifest(
        tmp,
        entries,
        stats,
        analyzer,
        config.bm25 or default_bm25(analyzer),
        None if dense is None or encoder is None else {"encoder": encoder.to_config(), **dense},
        build=BuildSection(
            config=config_dict(config, encoder),
            seconds=timings,
            encoder_choice=choice or None,
            tokenize_workers=tokenize_workers,
            extra=dict(extra or {}),
        ),
    )
    return spec, encoder


def all_records(corpora: list[Path]) -> Iterator[Record]:
    for path in corpora:
        corpus = Corpus(path, readonly=True)
        try:
            yield from corpus.iter_records()
        finally:
            corpus.close()
