"""The Python search API: ``tansaku.open(path).search("質問")``."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from tansaku.index.errors import ConfigError
from tansaku.index.filters import FilterSpec
from tansaku.index.sharded import SearchIndex
from tansaku.index.sharded import open_index as open_index_dir
from tansaku.rerank.base import Reranker
from tansaku.retrieve import MODES, FusionConfig, make_retriever

from .rerank_fusion import check_fusion_weight, recorded_defaults
from .search import DEFAULT_RERANK_K, SearchPipeline, SearchResult, check_ks


@dataclass(frozen=True)
class SearchConfig:
    """Search settings; any field can be overridden per call to :meth:`Searcher.search`.

    ``mode`` None means the first stage a trained reranker's fusion weight was chosen with
    (when it records one and the index can serve it), else hybrid when the index has a dense
    part, else bm25.
    ``reranker`` is a model id or directory, or None for no rerank stage (``"none"`` and
    ``""`` are read as None).
    ``rerank_fusion_weight`` w ranks reranked candidates by ``w · reranker + (1 - w) · first
    stage`` (per-query min-max normalised scores); 1.0 is pure reranker order. None means the
    weight a ``tansaku train-reranker`` model records (chosen on held-out training queries),
    else 1.0.
    """

    mode: str | None = None
    retrieve_k: int = 100
    rerank_k: int = DEFAULT_RERANK_K
    top_n: int = 10
    reranker: str | None = None
    fusion: FusionConfig = field(default_factory=FusionConfig)
    nprobe: int | None = None
    rerank_fusion_weight: float | None = None

    def __post_init__(self) -> None:
        if self.reranker is not None and self.reranker.strip().lower() in ("", "none"):
            # what a user may type for "no reranker"; from here on only None means that
            object.__setattr__(self, "reranker", None)
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"unknown search mode {self.mode!r}; choose one of {', '.join(MODES)}")
        check_ks(self.retrieve_k, self.rerank_k, self.top_n, reranking=self.reranker is not None)
        if self.rerank_fusion_weight is not None:
            check_fusion_weight(self.rerank_fusion_weight)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """An opened index plus a search configuration.

    >>> idx = tansaku.open("my-index")          # doctest: +SKIP
    >>> idx.search("富士山の高さ", top_n=3)       # doctest: +SKIP
    """

    def __init__(
        self, index: SearchIndex, config: SearchConfig = SearchConfig(), reranker: Reranker | None = None
    ) -> None:
        self.index = index
        self._inode = index.path.stat().st_ino
        self._lock = threading.RLock()
        self.config = config
        self._rerankers: dict[str, Reranker] = {}
        # search()'s pipelines by overrides, with the config they were built from (building
        # one costs about a tenth of a small search); emptied when the index is swapped
        self._pipelines: dict[tuple[tuple[str, type, Any], ...], tuple[SearchConfig, SearchPipeline]] = {}
        if reranker is not None:
            self._rerankers[config.reranker or repr(reranker)] = reranker
            self.config = replace(config, reranker=config.reranker or repr(reranker))

    def __repr__(self) -> str:
        return f"Searcher({self.index!r}, {self.config})"

    def _reranker(self, spec: str | None) -> Reranker | None:
        if spec is None:
            return None
        with self._lock:  # load each model once, even when two threads ask at the same time
            if spec not in self._rerankers:
                from tansaku.rerank import CrossEncoderReranker

                self._rerankers[spec] = CrossEncoderReranker(spec)
            return self._rerankers[spec]

    def refresh(self) -> bool:
        """Reopen the index if an update or rebuild swapped in a new version; True if it did.

        A swap replaces the directory, so its inode changes; one ``stat`` per search.
        """
        try:
            current = os.stat(self.index.path).st_ino  # (os.stat: no Path.stat frame per search)
        except FileNotFoundError:
            return False
        if current == self._inode:
            return False
        with self._lock:
            if current != self._inode:
                fresh = self.index.reopen()
                self.index, self._inode = fresh, current
                self._pipelines.clear()
                # The old index is left to the garbage collector: searches still running
                # on it keep their open files.
        return True

    def pipeline(self, **overrides: Any) -> SearchPipeline:
        """The SearchPipeline for this configuration (with per-call overrides)."""
        self.refresh()
        return self._pipeline(overrides, lazy=False)

    def _search_pipeline(self, overrides: dict[str, Any]) -> SearchPipeline:
        """The pipeline :meth:`search` runs (lazy text), reused while the config is the same."""
        self.refresh()
        config = self.config
        try:
            # the type too: 1, 1.0 and True are one dict key, yet only 1 is a valid top_n
            key = tuple((name, type(value), value) for name, value in overrides.items())
            cached = self._pipelines.get(key)
        except TypeError:  # an unhashable override: built each time
            return self._pipeline(overrides, lazy=True)
        if cached is not None and cached[0] is config:
            return cached[1]
        built = self._pipeline(overrides, lazy=True)
        if len(self._pipelines) >= 64:
            self._pipelines.clear()
        self._pipelines[key] = (config, built)
        return built

    def _pipeline(self, overrides: dict[str, Any], *, lazy: bool) -> SearchPipeline:
        index = self.index
        cfg = replace(self.config, **overrides) if overrides else self.config
        reranker = self._reranker(cfg.reranker)
        weight, mode = cfg.rerank_fusion_weight, cfg.mode
        if reranker is not None and (weight is None or mode is None):
            recorded_weight, stage = recorded_defaults(reranker)
            weight = recorded_weight if weight is None else weight
            # the weight was tuned with one first stage: keep the pair together by default
            if mode is None and stage in MODES and (stage == "bm25" or index.dense is not None):
                mode = stage
        mode = mode or ("hybrid" if index.dense is not None else "bm25")
        retriever = make_retriever(index, mode, fusion=cfg.fusion, nprobe=cfg.nprobe)
        return SearchPipeline(
            retriever,
            reranker,
            retrieve_k=cfg.retrieve_k,
            rerank_k=cfg.rerank_k,
            top_n=cfg.top_n,
            # Without a rerank stage nothing here reads the hits' text: with ``lazy`` it is
            # fetched (for all of them at once) when the caller first reads it.
            # The retriever made here hands its fresh hits to this pipeline alone: owned.
            prepare=partial(index.hydrate_lazy, owned=True) if lazy and reranker is None else index.hydrate,
            rerank_fusion_weight=1.0 if weight is None else weight,
            filter_warnings=index.filter_warnings,
        )

    def search(self, query: str, *, filter: FilterSpec = None, **overrides: Any) -> SearchResult:
        """Search one query; keyword arguments override :class:`SearchConfig` fields.

        ``filter`` restricts every stage to documents whose metadata match it, e.g.
        ``{"lang": "ja", "year": {"$gte": 2020}}`` (see :mod:`tansaku.index.filters`).

        Without a reranker the hits' title, text and metadata are read from the corpus when
        first used, all of a result's at once (``timings_ms["fetch"]`` is then only the
        set-up); a reranker reads them during the search.
        """
        return self._search_pipeline(overrides).search(query, filter=filter)

    def search_batch(
        self, queries: list[str], *, filter: FilterSpec = None, **overrides: Any
    ) -> list[SearchResult]:
        """:meth:`search` for many queries (their first stage as one batch)."""
        return self._search_pipeline(overrides).search_batch(queries, filter=filter)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_index(
    path: str | os.PathLike[str], *, reranker: Reranker | str | os.PathLike[str] | None = None, **config: Any
) -> Searcher:
    """Open the index at ``path`` for searching.

    ``reranker`` may be a model id/directory (loaded on first search) or a
    ready reranker object; other keywords are :class:`SearchConfig` fields.
    """
    index = open_index_dir(Path(path))
    if reranker is None or isinstance(reranker, (str, os.PathLike)):
        spec = None if reranker is None else str(reranker)
        return Searcher(index, SearchConfig(reranker=spec, **config))
    return Searcher(index, SearchConfig(**config), reranker=reranker)
