"""Incremental updates of a sharded index: one new generation, swapped in at once.

New documents go to the last shard (a new shard when it is full); replacements and
deletions to the shard that holds the document. Only those shards' corpora are copied and
changed, and only their new or replaced documents analysed and encoded; the others' files
are hard-linked into the staged generation unchanged. The corpus-wide BM25 statistics are
then reduced again and every shard's weights rewritten with them (a changed document count
moves every idf), so scores stay those of one index over the same documents.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bm25 import BM25Index
from .checksums import known_checksums
from .corpus import Corpus, copy_corpus
from .counts import merged_counts
from .errors import IngestError
from .manifest import ShardEntry, UpdateRecord
from .records import Record
from .shard_builder import _TF_DIR, write_sharded_manifest
from .sharded import ShardedIndex, shard_dir
from .stats import CorpusStats
from .store import BM25_DIR, CORPUS_FILE, DENSE_DIR, IDS_FILE
from .tokenize_workers import resolve_workers, tokenize_all

_STAGING = ".update.sqlite"


@dataclass
class _Plan:
    """What happens to one shard of the new generation (``source``: its old shard, if any)."""

    source: int | None
    upserts: list[Record] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.source is None or bool(self.upserts or self.deletes)


def update_shards(
    old: ShardedIndex,
    tmp: Path,
    add: Iterable[Record],
    delete: Iterable[str],
    *,
    missing_ok: bool,
    progress: bool,
    say: Callable[[str], None],
    encode: Callable[[Sequence[str]], np.ndarray],
) -> tuple[int, int, int, int]:
    """Write the next generation of ``old`` into ``tmp``; (added, replaced, deleted, docs)."""
    start = time.perf_counter()
    staging = Corpus(tmp / _STAGING)
    staging.ingest(add, progress=progress)  # validated, duplicates refused, before any change
    records = list(staging.iter_records())
    staging.close()
    (tmp / _STAGING).unlink()
    delete_ids = list(dict.fromkeys(str(i) for i in delete))
    if not records and not delete_ids:
        raise IngestError("no documents to add and no ids to delete: nothing to update")

    owner = _owners(old, [r.id for r in records] + delete_ids)
    missing = [i for i in delete_ids if i not in owner]
    if missing and not missing_ok:
        shown = ", ".join(repr(m) for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise IngestError(f"cannot delete unknown ids: {shown}{more}")

    plans = [_Plan(source=i) for i in range(len(old.shards))]
    capacity = int(
        (old.manifest.counts or {}).get("shard_capacity") or max(e.count for e in old.manifest.shards or ())
    )
    room = capacity - len(old.shards[-1].doc_ids)
    replaced = 0
    for record in records:
        if record.id in owner:
            plans[owner[record.id]].upserts.append(record)
            replaced += 1
            continue
        if room <= 0:  # the last shard is full: a new one
            plans.append(_Plan(source=None))
            room = capacity
        plans[-1].upserts.append(record)
        room -= 1
    for doc_id in delete_ids:
        if doc_id in owner:
            plans[owner[doc_id]].deletes.append(doc_id)

    entries: list[ShardEntry] = []
    own: list[CorpusStats] = []
    linked: dict[str, BM25Index] = {}  # unchanged shards' counts, read from the open old shard
    for plan in plans:
        number = len(entries)
        root = tmp / shard_dir(number)
        root.mkdir(parents=True)
        if plan.changed:
            count, stats = _rewrite_shard(old, plan, root, progress, say, encode)
        else:
            assert plan.source is not None
            count, stats = _link_shard(old, plan.source, root)
            linked[shard_dir(number)] = old.bm25.local_shard(plan.source)
        if count == 0:  # every document of the shard was deleted: it goes
            shutil.rmtree(root)
            continue
        entries.append(ShardEntry(dir=shard_dir(number), start=sum(e.count for e in entries), count=count))
        own.append(stats)
    if not entries:
        raise IngestError("an update cannot delete every document; build a new index")

    stats = CorpusStats.merge(own)
    params = old.bm25.params
    for entry in entries:
        root = tmp / entry.dir
        counted = (
            linked[entry.dir] if entry.dir in linked else BM25Index.load(root / _TF_DIR, params, mmap=True)
        )
        BM25Index.from_doc_term(counted.doc_term(), counted.vocab, counted.doc_len, params, stats).save(
            root / BM25_DIR
        )
        del counted
        if entry.dir not in linked:
            shutil.rmtree(root / _TF_DIR)
    if (old.path / "encoder").is_dir():  # a corpus encoder travels with its index
        shutil.copytree(old.path / "encoder", tmp / "encoder")

    added = len(records) - replaced
    deleted = len(delete_ids) - len(missing)
    history = list(old.manifest.updates or ())[-99:]
    history.append(
        UpdateRecord(
            added=added, replaced=replaced, deleted=deleted, seconds=round(time.perf_counter() - start, 3)
        )
    )
    dense = None
    if old.manifest.dense is not None:
        dense = {**old.manifest.dense.to_dict(), "vectors": stats.n_docs}
    write_sharded_manifest(
        tmp,
        entries,
        stats,
        old.analyzer,
        params,
        dense,
        build=old.manifest.build,
        generation=(old.manifest.generation or 1) + 1,
        capacity=capacity,
        updates=tuple(history),
        known=known_checksums(old.path, old.manifest.files),
    )
    return added, replaced, deleted, stats.n_docs


def _owners(old: ShardedIndex, ids: Sequence[str]) -> dict[str, int]:
    """The shard holding each of ``ids`` that the index has."""
    owner: dict[str, int] = {}
    wanted = list(dict.fromkeys(ids))
    for number, shard in enumerate(old.shards):
        for doc_id in shard.corpus.get_many(wanted):
            owner[doc_id] = number
    return owner


def _link_shard(old: ShardedIndex, source: int, root: Path) -> tuple[int, CorpusStats]:
    """An unchanged shard: its files hard-linked (never modified in place), its counts kept."""
    src = old.path / (old.manifest.shards or ())[source].dir
    for name in (CORPUS_FILE, IDS_FILE):
        os.link(src / name, root / name)
    if (src / DENSE_DIR).is_dir():
        (root / DENSE_DIR).mkdir()
        for item in (src / DENSE_DIR).iterdir():
            os.link(item, root / DENSE_DIR / item.name)
    counted = old.bm25.local_shard(source)  # its term frequencies: weighed again by the caller
    return counted.n_docs, counted.corpus_stats()


def _rewrite_shard(
    old: ShardedIndex,
    plan: _Plan,
    root: Path,
    progress: bool,
    say: Callable[[str], None],
    encode: Callable[[Sequence[str]], np.ndarray],
) -> tuple[int, CorpusStats]:
    """A changed or new shard: corpus copied and changed, only new texts analysed/encoded."""
    if plan.source is not None:
        copy_corpus(old.path / (old.manifest.shards or ())[plan.source].dir / CORPUS_FILE, root / CORPUS_FILE)
    corpus = Corpus(root / CORPUS_FILE)
    corpus.ingest(plan.upserts, progress=False)
    corpus.delete(plan.deletes)
    touched = {r.id for r in plan.upserts}
    old_ids = old.shards[plan.source].doc_ids if plan.source is not None else np.zeros(0, dtype=str)
    old_pos = {str(doc_id): i for i, doc_id in enumerate(old_ids)}
    ids: list[str] = []
    reuse: list[int] = []
    new_texts: list[str] = []
    for record in corpus.iter_records():
        ids.append(record.id)
        pos = -1 if record.id in touched else old_pos.get(record.id, -1)
        reuse.append(pos)
        if pos < 0:
            new_texts.append(record.indexed_text)
    corpus.close()
    if not ids:
        return 0, CorpusStats(0, 0, (), np.zeros(0, np.int64))
    say(f"{root.name}: {len(new_texts):,} documents to analyse, {len(ids) - len(new_texts):,} reused")
    reuse_arr = np.asarray(reuse, dtype=np.int64)
    is_new = reuse_arr < 0
    tokens = list(
        tokenize_all(
            old.analyzer,
            new_texts,
            total=len(new_texts),
            progress=progress,
            workers=resolve_workers(0, len(new_texts)),
        )
    )
    source_bm25 = old.bm25.local_shard(plan.source) if plan.source is not None else None
    by_doc, vocab, doc_len = merged_counts(source_bm25, reuse_arr, is_new, tokens)
    counted = BM25Index.from_doc_term(by_doc, vocab, doc_len, old.bm25.params)
    counted.save(root / _TF_DIR)
    np.save(root / IDS_FILE, np.asarray(ids, dtype=str))
    if old.dense is not None:
        template = old.dense.shards[plan.source if plan.source is not None else -1]
        vectors = np.empty((len(ids), old.dense.dim), dtype=np.float32)
        if (~is_new).any():
            vectors[~is_new] = old.dense.shards[plan.source].all_vectors()[reuse_arr[~is_new]]  # type: ignore[index]
        if is_new.any():
            vectors[is_new] = encode(new_texts)
        template.with_vectors(vectors).save(root / DENSE_DIR)  # the shared quantizer, new codes
    return len(ids), counted.corpus_stats()
