"""Incremental updates: add/replace and delete documents without a full rebuild.

Copy-on-write, like a build: the corpus is copied (SQLite backup API) into a staged
directory, changed, and the BM25 matrix and FAISS index are recomputed from what the
old index already holds (term frequencies and vectors), so only new or replaced
documents are tokenised and encoded and FAISS is never retrained. BM25 statistics
(N, df, avgdl, the idf floor) are recomputed, so scores equal a fresh build's. The
swap is atomic: readers see the old or the new index, never a mix.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import checkpoint, staged
from .bm25 import BM25Index
from .build_encoder import encode_documents
from .builder import write_parts
from .corpus import Corpus, copy_corpus
from .counts import merged_counts
from .encoders import Encoder
from .errors import IngestError
from .manifest import IndexManifest, UpdateRecord
from .paths import ENCODER_DIR, real_path
from .records import Record
from .shard_update import update_shards
from .sharded import ShardedIndex
from .store import CORPUS_FILE, Index
from .tokenize_workers import resolve_workers, tokenize_all


@dataclass(frozen=True)
class UpdateReport:
    """What an update changed."""

    added: int
    replaced: int
    deleted: int
    docs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def update_index(
    path: str | os.PathLike[str],
    add: Iterable[Record] = (),
    delete: Iterable[str] = (),
    *,
    missing_ok: bool = False,
    encoder: Encoder | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> UpdateReport:
    """Upsert ``add`` (by id) then delete ``delete`` ids in the index at ``path``.

    Unknown ids in ``delete`` are an error naming them unless ``missing_ok``. On any
    error nothing changes.
    """
    path = real_path(path)  # `idx` and a link to it: one index, one lock
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    with staged(path) as tmp:
        if IndexManifest.load(path).shards is not None:
            return _update_sharded(path, tmp, add, delete, missing_ok, encoder, progress, say, start)
        old = Index.open(path, encoder=encoder)
        try:
            copy_corpus(old.path / CORPUS_FILE, tmp / CORPUS_FILE)
            if (old.path / ENCODER_DIR).is_dir():  # a corpus encoder travels with its index
                shutil.copytree(old.path / ENCODER_DIR, tmp / ENCODER_DIR)
            corpus = Corpus(tmp / CORPUS_FILE)
            touched: set[str] = set()

            def remember(records: Iterable[Record]) -> Iterator[Record]:
                for record in records:
                    touched.add(record.id)
                    yield record

            corpus.ingest(remember(add), progress=progress)
            checkpoint("update")
            delete_ids = list(dict.fromkeys(str(i) for i in delete))
            if not touched and not delete_ids:
                raise IngestError("no documents to add and no ids to delete: nothing to update")
            missing = corpus.delete(delete_ids)
            if missing and not missing_ok:
                shown = ", ".join(repr(m) for m in missing[:10])
                raise IngestError(
                    f"cannot delete unknown ids: {shown}"
                    + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                )
            old_pos = {str(doc_id): i for i, doc_id in enumerate(old.doc_ids)}
            ids: list[str] = []
            reuse: list[int] = []  # old position of each kept document, -1 for new text
            new_texts: list[str] = []
            for record in corpus.iter_records():
                ids.append(record.id)
                pos = old_pos.get(record.id, -1) if record.id not in touched else -1
                reuse.append(pos)
                if pos < 0:
                    new_texts.append(record.indexed_text)
            if not ids:
                raise IngestError("an update cannot delete every document; build a new index")
            replaced = sum(1 for i in touched if i in old_pos)
            say(f"update: {len(new_texts):,} documents to analyse, {len(ids) - len(new_texts):,} reused")

            reuse_arr = np.asarray(reuse, dtype=np.int64)
            is_new = reuse_arr < 0
            tokens = tokenize_all(
                old.analyzer,
                new_texts,
                total=len(new_texts),
                progress=progress,
                workers=resolve_workers(0, len(new_texts)),
            )
            by_doc, vocab, doc_len = merged_counts(old.bm25, reuse_arr, is_new, list(tokens))
            bm25 = BM25Index.from_doc_term(by_doc, vocab, doc_len, old.bm25.params)
            dense = None
            if old.dense is not None:
                vectors = np.empty((len(ids), old.dense.dim), dtype=np.float32)
                if (~is_new).any():
                    vectors[~is_new] = old.dense.all_vectors()[reuse_arr[~is_new]]
                if is_new.any():
                    vectors[is_new] = encode_documents(
                        old.encoder, new_texts, len(new_texts), 64, progress, say
                    )
                dense = old.dense.with_vectors(vectors)
            corpus.close()
            history = list(old.manifest.updates or ())[-99:]
            history.append(
                UpdateRecord(
                    added=len(touched) - replaced,
                    replaced=replaced,
                    deleted=len(delete_ids) - len(missing),
                    seconds=round(time.perf_counter() - start, 3),
                )
            )
            write_parts(
                tmp,
                ids,
                old.analyzer,
                bm25,
                dense,
                old.encoder if dense is not None else None,
                build=old.manifest.build,
                updates=tuple(history),
            )
            report = UpdateReport(
                len(touched) - replaced,
                replaced,
                len(delete_ids) - len(missing),
                len(ids),
                time.perf_counter() - start,
            )
        finally:
            old.close()
    return report


def _update_sharded(
    path: Path,
    tmp: Path,
    add: Iterable[Record],
    delete: Iterable[str],
    missing_ok: bool,
    encoder: Encoder | None,
    progress: bool,
    say: Callable[[str], None],
    start: float,
) -> UpdateReport:
    """:func:`update_index` of a sharded index (see :mod:`tansaku.index.shard_update`)."""
    old = ShardedIndex.open(path, encoder=encoder)
    try:
        added, replaced, deleted, docs = update_shards(
            old,
            tmp,
            add,
            delete,
            missing_ok=missing_ok,
            progress=progress,
            say=say,
            encode=lambda texts: encode_documents(old.encoder, texts, len(texts), 64, progress, say),
        )
    finally:
        old.close()
    checkpoint("update")
    return UpdateReport(added, replaced, deleted, docs, time.perf_counter() - start)
