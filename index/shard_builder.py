"""Building a sharded index: memory follows the shard, not the corpus.

The records stream into one staging corpus on disk (so every record is validated and a
duplicate id is caught across shards), which is cut into contiguous shards. Each shard
is then tokenised and counted on its own and its term frequencies written to disk; the
shards' statistics reduce to the corpus-wide ones (:class:`~tansaku.index.stats.CorpusStats`);
and every shard's BM25 weights are computed with those, one shard at a time. Dense vectors
are encoded per shard; FAISS is trained once, on the same sample rows an unsharded build
would draw, and each shard gets its codes. The whole directory is staged and swapped in at
once, like any build.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .analyzer import Analyzer
from .arrays import load_array
from .atomic import checkpoint
from .bm25 import BM25Index, BM25Params
from .checksums import file_table
from .corpus import Corpus
from .dense import DenseIndex, FaissParams, plan, sample_rows, train_points
from .dense_shards import ShardedDense
from .encoders import Encoder
from .errors import ConfigError
from .manifest import BM25Section, BuildSection, DenseSection, IndexManifest, ShardEntry, UpdateRecord
from .sharded import STATS_DIR, shard_dir
from .stats import CorpusStats
from .store import BM25_DIR, CORPUS_FILE, DENSE_DIR, IDS_FILE
from .tokenize_workers import resolve_workers, tokenize_all

STAGING_CORPUS = ".ingest.sqlite"  # every record, before it is cut into shards
# A one-index build's peak memory, measured with scripts/bench_shards.py on synthetic documents
# of 267 characters: ja-surface at 200,000 documents 1,341 MiB (~21 bytes per character above
# the interpreter's ~250 MiB), ja at 1,000,000 documents 4,743 MiB (~18 bytes per character).
# The larger figure, rounded up, is the estimate.
BUILD_BYTES_PER_CHAR = 24
BASE_BYTES = 300 << 20
_TF_DIR = ".tf"  # a shard's own BM25 arrays (term frequencies), until the global weights exist
_VECTORS = ".vectors.npy"  # a shard's float vectors, until FAISS is trained


def shard_sizes(n: int, shards: int | None, shard_docs: int | None) -> list[int]:
    """Contiguous shard sizes for ``n`` documents: ``shards`` near-equal ones, or ``shard_docs`` each."""
    if shards is not None and shard_docs is not None:
        raise ConfigError("give the number of shards or the documents per shard, not both")
    if shard_docs is not None:  # full shards, the last one holds the rest
        full, rest = divmod(n, shard_docs)
        return [shard_docs] * full + ([rest] if rest else [])
    assert shards is not None
    shards = min(shards, n)  # never an empty shard
    base, extra = divmod(n, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


def shards_for_budget(corpus: Corpus, n: int, budget: int | None) -> tuple[int, str]:
    """How many shards a build of ``corpus`` needs to stay within ``budget`` bytes, and why.

    One index's build peaks at about ``BUILD_BYTES_PER_CHAR`` per character of text plus the
    interpreter's own (measured, see the constants); ``budget`` None is half the machine's
    memory. 1 means one index fits.
    """
    budget = budget or default_memory_budget()
    chars = corpus.total_chars()
    estimate = BASE_BYTES + BUILD_BYTES_PER_CHAR * chars
    if estimate <= budget:
        return 1, "fits the memory budget"
    # each shard's text within half of what the budget leaves beside the interpreter: room
    # for the parts every shard shares (the statistics, the FAISS training)
    allowance = max(1, (budget - BASE_BYTES) // 2)
    shards = min(n, math.ceil(BUILD_BYTES_PER_CHAR * chars / allowance))
    return shards, (
        f"one index's build would peak near {estimate / 2**30:.1f} GiB for {chars:,} characters, "
        f"over the {budget / 2**30:.1f} GiB memory budget (--memory-budget)"
    )


def default_memory_budget() -> int:
    """Half the machine's physical memory (8 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def build_shards(
    tmp: Path,
    n: int,
    *,
    analyzer: Analyzer,
    params: BM25Params,
    shards: int | None,
    shard_docs: int | None,
    workers: int,
    progress: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[list[ShardEntry], CorpusStats, int]:
    """Cut the ``n`` documents ingested at ``tmp/STAGING_CORPUS`` into shards and write every
    shard's corpus, ids and BM25 files (global weights) into ``tmp``.

    Returns the shard entries, the corpus statistics and the tokenising workers used.
    """
    staging = Corpus(tmp / STAGING_CORPUS)
    sizes = shard_sizes(n, shards, shard_docs)
    say(f"shards: {len(sizes)} of {min(sizes):,}-{max(sizes):,} documents ({n:,} in all)")

    t0 = time.perf_counter()
    entries: list[ShardEntry] = []
    own: list[CorpusStats] = []
    workers = resolve_workers(workers, max(sizes))
    last, start = 0, 0
    for number, count in enumerate(sizes):
        root = tmp / shard_dir(number)
        root.mkdir(parents=True)
        last = staging.copy_rows(root / CORPUS_FILE, after=last, count=count)
        corpus = Corpus(root / CORPUS_FILE)
        ids: list[str] = []
        texts = _texts_keeping_ids(corpus, ids)
        say(f"shard {number + 1}/{len(sizes)}: analysing {count:,} documents")
        tokens = tokenize_all(analyzer, texts, total=count, progress=progress, workers=workers)
        own.append(count_shard(root, ids, tokens, params))
        corpus.close()
        entries.append(ShardEntry(dir=shard_dir(number), start=start, count=count))
        start += count
        checkpoint("shard")
    staging.close()
    (tmp / STAGING_CORPUS).unlink()
    stats = CorpusStats.merge(own)
    timings["tokenize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for entry in tqdm(entries, desc="BM25 weights", unit="shard", disable=not progress):
        weigh_shard(tmp / entry.dir, params, stats)
    timings["bm25"] = time.perf_counter() - t0
    return entries, stats, workers


def count_shard(
    root: Path, ids: Sequence[str], tokens: Iterable[list[str]], params: BM25Params
) -> CorpusStats:
    """Count one shard's terms and write its ids and term frequencies into ``root``.

    ``tokens`` are the shard's documents analysed, in order; ``ids`` their ids (read once the
    tokens are consumed, so a caller may fill it as the texts stream). :func:`weigh_shard`
    turns the counts into BM25 weights once the corpus's statistics are known. Returns the
    shard's own statistics.
    """
    counted = BM25Index.build(tokens, params)
    np.save(root / IDS_FILE, np.asarray(ids, dtype=str))
    counted.save(root / _TF_DIR)
    return counted.corpus_stats()


def weigh_shard(root: Path, params: BM25Params, stats: CorpusStats) -> None:
    """The BM25 weights of a shard counted by :func:`count_shard`, with the corpus's ``stats``."""
    counted = BM25Index.load(root / _TF_DIR, params, mmap=True)
    weighed = BM25Index.from_doc_term(counted.doc_term(), counted.vocab, counted.doc_len, params, stats)
    weighed.save(root / BM25_DIR)
    del counted, weighed  # the memory maps, before their files go
    shutil.rmtree(root / _TF_DIR)


def _texts_keeping_ids(corpus: Corpus, ids: list[str]) -> Iterator[str]:
    """The shard's "title text" in order; its ids are collected on the same pass."""
    for record in corpus.iter_records():
        ids.append(record.id)
        yield record.indexed_text


def encode_shard(root: Path, count: int, encode: Callable[[Iterable[str], int], np.ndarray]) -> None:
    """Encode the ``count`` documents of the shard at ``root`` (its corpus, in order) with
    ``encode(texts, n)``; the vectors wait beside the corpus until FAISS is trained."""
    corpus = Corpus(root / CORPUS_FILE, readonly=True)
    try:
        vectors = encode((r.indexed_text for r in corpus.iter_records()), count)
    finally:
        corpus.close()
    np.save(root / _VECTORS, vectors)


def build_dense_shards(
    tmp: Path,
    entries: list[ShardEntry],
    encoder: Encoder,
    faiss: FaissParams,
    *,
    encode_shards: Callable[[Encoder], None],
    say: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[FaissParams, str, dict[str, object]]:
    """Encode every shard, train FAISS once, write each shard's FAISS files.

    ``encode_shards(encoder)`` encodes every shard with :func:`encode_shard` (in this
    process, with the build's progress reporting, or on a cluster's workers). Returns the
    resolved FAISS parameters, the reason for them and the manifest's dense description.
    """
    t0 = time.perf_counter()
    encode_shards(encoder)
    timings["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    checkpoint("faiss")
    n = sum(e.count for e in entries)
    resolved, reason = plan(n, encoder.dim, faiss)
    shard_vectors = [load_array(tmp / e.dir / _VECTORS, mmap=True) for e in entries]
    trained: DenseIndex | None = None
    if resolved.kind != "flat":
        # The rows an unsharded build would train on, gathered from the shards.
        rows = sample_rows(n, train_points(n, resolved), resolved.seed)
        starts = np.asarray([e.start for e in entries], dtype=np.int64)
        owner = np.searchsorted(starts, rows, side="right") - 1
        sample = np.concatenate(
            [np.asarray(shard_vectors[s])[rows[owner == s] - starts[s]] for s in range(len(entries))]
        )
        say(f"FAISS: training {resolved.kind} on {len(sample):,} of {n:,} vectors")
        trained = ShardedDense.train(sample, n, encoder.dim, faiss)
    described: dict[str, object] = {}
    for entry, vectors in zip(entries, shard_vectors, strict=True):
        part = (
            trained.with_vectors(np.asarray(vectors))
            if trained is not None
            else DenseIndex.build(np.asarray(vectors), FaissParams(kind="flat", nprobe=resolved.nprobe))
        )
        described = part.save(tmp / entry.dir / DENSE_DIR)
        del part
    del shard_vectors
    for entry in entries:
        (tmp / entry.dir / _VECTORS).unlink()
    say(f"FAISS: {resolved.kind} ({reason}), {len(entries)} shards")
    timings["faiss"] = time.perf_counter() - t0
    described.update(faiss=_plain_params(resolved), reason=reason, vectors=n)
    return resolved, reason, described


def _plain_params(params: FaissParams) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(params)


def write_sharded_manifest(
    tmp: Path,
    entries: list[ShardEntry],
    stats: CorpusStats,
    analyzer: Analyzer,
    params: BM25Params,
    dense: Mapping[str, object] | None,
    *,
    build: BuildSection | None,
    generation: int = 1,
    capacity: int | None = None,
    updates: tuple[UpdateRecord, ...] | None = None,
    known: Mapping[Any, Mapping[str, Any]] | None = None,
) -> None:
    """The top-level manifest of a sharded index staged in ``tmp`` (and the statistics' files).

    ``dense``: the manifest's dense section (encoder config included), None for BM25 only;
    ``capacity``: documents a shard takes before an update starts a new one (default: the
    largest shard's count); ``known``: checksums of files taken over from the previous
    version (:func:`~tansaku.index.checksums.known_checksums`).
    """
    from dataclasses import asdict

    postings = 0
    for entry in entries:
        postings += int(load_array(tmp / entry.dir / BM25_DIR / "postings.npy", mmap=True).shape[0])
    bm25 = BM25Section(
        params=asdict(params),
        docs=stats.n_docs,
        terms=len(stats.vocab),
        postings=postings,
        avgdl=stats.avgdl,
    )
    dense_section = None if dense is None else DenseSection.from_dict(dict(dense))
    capacity = capacity or max(e.count for e in entries)
    stats_entry = stats.save(tmp / STATS_DIR)
    IndexManifest(
        counts={"docs": stats.n_docs, "shards": len(entries), "shard_capacity": capacity},
        analyzer=analyzer.to_config(),
        bm25=bm25,
        dense=dense_section,
        build=build,
        shards=tuple(entries),
        stats=stats_entry,
        generation=generation,
        updates=updates,
        files=file_table(tmp, known),
    ).save(tmp)
