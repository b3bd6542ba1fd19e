"""tansaku.index: the corpus (SQLite), analyzers, BM25 matrix, encoders and FAISS index.

>>> from tansaku.index import build_index, read_file, Index
>>> idx = build_index("my-index", read_file("docs.jsonl"))   # doctest: +SKIP
>>> Index.open("my-index").bm25.top_k(["東京"], 10)            # doctest: +SKIP
"""

from .analyzer import Analyzer, JapaneseAnalyzer, WordAnalyzer, get_analyzer
from .bm25 import BM25Index, BM25Params
from .builder import BuildConfig, build_index
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
