"""Building an index directory from records, crash-safely.

Everything is written into a temporary sibling directory; only a complete,
fsynced index is swapped in, so an interrupted or failed build leaves the
previous index (if any) untouched.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .analyzer import get_analyzer, tokenize_all
from .atomic import clean_stale, swap_in, temp_sibling, write_lock
from .bm25 import BM25Index, BM25Params
from .corpus import Corpus
from .dense import DenseIndex, FaissParams
from .encoders import Encoder, load_encoder
from .errors import ConfigError, IngestError
from .manifest import new_manifest, write_manifest
from .records import Record
from .store import BM25_DIR, CORPUS_FILE, DENSE_DIR, IDS_FILE, Index


@dataclass(frozen=True)
class BuildConfig:
    """How to build an index. ``encoder=None`` builds BM25 only (no dense index)."""

    analyzer: str = "ja"
    bm25: BM25Params = field(default_factory=BM25Params)
    encoder: str | None = None
    query_prefix: str = ""
    document_prefix: str = ""
    faiss: FaissParams = field(default_factory=FaissParams)
    encode_batch_size: int = 64


def _encode_corpus(encoder: Encoder, corpus: Corpus, n: int, batch: int,
                   progress: bool) -> np.ndarray:
    vectors = np.empty((n, encoder.dim), dtype=np.float32)
    chunk: list[str] = []
    row = 0
    with tqdm(total=n, desc="encode", unit="doc", disable=not progress) as bar:
        def flush() -> None:
            nonlocal row
            out = encoder.encode_documents(chunk)
            vectors[row:row + len(chunk)] = out
            row += len(chunk)
            bar.update(len(chunk))
            chunk.clear()

        for record in corpus.iter_records():
            chunk.append(record.indexed_text)
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
    return vectors


def build_index(path: str | os.PathLike[str], records: Iterable[Record],
                config: BuildConfig = BuildConfig(), *, encoder: Encoder | None = None,
                progress: bool = True, total: int | None = None,
                log: Callable[[str], None] | None = None) -> Index:
    """Build (or rebuild) the index at ``path`` from ``records`` and open it.

    ``encoder`` (an :class:`Encoder` object) overrides ``config.encoder``. On any
    error the previous index at ``path`` is left as it was.
    """
    path = Path(path).expanduser().absolute()
    say = log or (lambda _msg: None)
    analyzer = get_analyzer(config.analyzer)
    if encoder is None and config.encoder and config.encoder.lower() != "none":
        say(f"loading encoder {config.encoder}")
        encoder = load_encoder(config.encoder, query_prefix=config.query_prefix,
                               document_prefix=config.document_prefix,
                               batch_size=config.encode_batch_size)
    say("dense index: " + (f"encoder {encoder.name}" if encoder else
                           "none (BM25 only; pass --encoder MODEL for dense/hybrid search)"))
    timings: dict[str, float] = {}
    with write_lock(path):
        clean_stale(path)
        tmp = temp_sibling(path)
        try:
            t0 = time.perf_counter()
            corpus = Corpus(tmp / CORPUS_FILE)
            n = corpus.ingest(records, progress=progress, total=total)
            if n == 0:
                raise IngestError("no documents to index")
            timings["ingest"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            ids: list[str] = []
            texts = (ids.append(r.id) or r.indexed_text for r in corpus.iter_records())
            bm25 = BM25Index.build(tokenize_all(analyzer, texts, total=n, progress=progress),
                                   config.bm25)
            np.save(tmp / IDS_FILE, np.asarray(ids, dtype=str))
            bm25_info = bm25.save(tmp / BM25_DIR)
            timings["tokenize+bm25"] = time.perf_counter() - t0

            dense_info = None
            if encoder is not None:
                t0 = time.perf_counter()
                vectors = _encode_corpus(encoder, corpus, n, config.encode_batch_size, progress)
                timings["encode"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                say(f"FAISS: training/adding {n:,} vectors")
                dense = DenseIndex.build(vectors, config.faiss)
                say(f"FAISS: {dense.params.kind} ({dense.reason})")
                dense_info = {"encoder": encoder.to_config(), **dense.save(tmp / DENSE_DIR)}
                timings["faiss"] = time.perf_counter() - t0
            corpus.close()

            manifest = new_manifest(
                counts={"docs": n},
                analyzer=analyzer.to_config(),
                bm25=bm25_info,
                dense=dense_info,
                build={"config": _config_dict(config, encoder), "seconds": timings},
            )
            write_manifest(tmp, manifest)
            swap_in(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return Index.open(path, encoder=encoder)


def _config_dict(config: BuildConfig, encoder: Encoder | None) -> dict[str, Any]:
    out = asdict(config)
    out["encoder"] = encoder.name if encoder else None
    return out


def validate_k(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value
