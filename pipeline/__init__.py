"""tansaku.pipeline: the search API, SearchPipeline and the ``tansaku`` CLI."""

from .api import SearchConfig, Searcher, open_index
from .search import SearchPipeline, SearchResult

__all__ = ["SearchConfig", "SearchPipeline", "SearchResult", "Searcher", "open_index"]
