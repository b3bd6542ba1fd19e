"""tansaku.index: the corpus (SQLite), analyzers, BM25 matrix, encoders and FAISS index.

>>> from tansaku.index import build_index, read_file, Index
>>> idx = build_index("my-index", read_file("docs.jsonl"))   # doctest: +SKIP
>>> Index.open("my-index").bm25.top_k(["東京"], 10)            # doctest: +SKIP

The names below are imported on first use (PEP 562), so that importing one submodule
(``tansaku.index.errors`` for the CLI, ``tansaku.index.sharded`` for a BM25 search) does not
load the rest of the stack (the builder, FAISS, the encoders).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .analyzer import Analyzer, JapaneseAnalyzer, WordAnalyzer, get_analyzer
    from .bm25 import BM25Index, BM25Params
    from .build_config import BuildConfig
    from .builder import build_index
    from .corpus import Corpus
    from .dense import DenseIndex, FaissParams
    from .encoders import Encoder, SentenceTransformerEncoder, load_encoder
    from .errors import (
        ConfigError,
        DiskFullError,
        IndexCorruptError,
        IndexFormatError,
        IngestError,
        ModelLoadError,
        TansakuError,
    )
    from .filters import Filter, parse_filter
    from .hit import Hit
    from .records import FieldMap, Record, read_dicts, read_file
    from .sample import SAMPLE_CORPUS
    from .sharded import SearchIndex, ShardedIndex, open_index
    from .store import Index, create_field_index
    from .verify import CheckReport, Problem, verify_index

_EXPORTS = {
    "Analyzer": "analyzer",
    "JapaneseAnalyzer": "analyzer",
    "WordAnalyzer": "analyzer",
    "get_analyzer": "analyzer",
    "BM25Index": "bm25",
    "BM25Params": "bm25",
    "BuildConfig": "build_config",
    "build_index": "builder",
    "Corpus": "corpus",
    "DenseIndex": "dense",
    "FaissParams": "dense",
    "Encoder": "encoders",
    "SentenceTransformerEncoder": "encoders",
    "load_encoder": "encoders",
    "ConfigError": "errors",
    "DiskFullError": "errors",
    "IndexCorruptError": "errors",
    "IndexFormatError": "errors",
    "IngestError": "errors",
    "ModelLoadError": "errors",
    "TansakuError": "errors",
    "Filter": "filters",
    "parse_filter": "filters",
    "Hit": "hit",
    "FieldMap": "records",
    "Record": "records",
    "read_dicts": "records",
    "read_file": "records",
    "SAMPLE_CORPUS": "sample",
    "SearchIndex": "sharded",
    "ShardedIndex": "sharded",
    "open_index": "sharded",
    "Index": "store",
    "create_field_index": "store",
    "CheckReport": "verify",
    "Problem": "verify",
    "verify_index": "verify",
}

__all__ = [
    "Analyzer",
    "BM25Index",
    "BM25Params",
    "BuildConfig",
    "CheckReport",
    "ConfigError",
    "Corpus",
    "DiskFullError",
    "DenseIndex",
    "Encoder",
    "FaissParams",
    "FieldMap",
    "Filter",
    "Hit",
    "Index",
    "IndexCorruptError",
    "IndexFormatError",
    "IngestError",
    "JapaneseAnalyzer",
    "ModelLoadError",
    "Record",
    "SAMPLE_CORPUS",
    "SearchIndex",
    "SentenceTransformerEncoder",
    "ShardedIndex",
    "TansakuError",
    "WordAnalyzer",
    "build_index",
    "create_field_index",
    "get_analyzer",
    "load_encoder",
    "open_index",
    "parse_filter",
    "Problem",
    "read_dicts",
    "read_file",
    "verify_index",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
