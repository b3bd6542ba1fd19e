"""How to build an index: :class:`BuildConfig` and the BM25 parameters each analyzer gets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .analyzer import Analyzer
from .bm25 import BM25Params
from .checks import check_optional_int
from .dense import FaissParams
from .encoders import Encoder
from .errors import ConfigError

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


def config_dict(config: BuildConfig, encoder: Encoder | None) -> dict[str, Any]:
    """The build settings a manifest records (the encoder by the name it was resolved to)."""
    out = asdict(config)
    out["encoder"] = encoder.name if encoder else None
    return out
