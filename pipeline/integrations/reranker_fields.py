"""The settings both framework rerankers share (LangChain compressor, LlamaIndex postprocessor).

One pydantic mixin, so the two adapters declare the same fields once and open the same
:mod:`~tansaku.pipeline.integrations.backends` seam the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from tansaku.index.checks import check_optional_int

from .backends import LocalRerank, RemoteRerank, open_reranker, rerank_text
from .client import DEFAULT_TIMEOUT_S


class RerankerFields(BaseModel):
    """``model`` (directory, hub id or reranker object; with ``url`` the server's reranker
    name), ``url``/``api_key``/``timeout`` of a ``tansaku serve``, ``top_n`` and ``title_key``
    (the metadata key read before the text, "title text"; None reads the text alone)."""

    model: Any = Field(
        None,
        description="reranker model directory, hub id or object; with url: "
        "the server's reranker name (optional)",
    )
    url: str | None = Field(None, description="address of a tansaku serve server")
    api_key: str | None = Field(None, repr=False, description="the server's --api-key")
    timeout: float = DEFAULT_TIMEOUT_S
    top_n: int | None = None
    title_key: str | None = "title"

    _backend: LocalRerank | RemoteRerank = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        check_optional_int("top_n", data.get("top_n"))  # a ConfigError, not a pydantic one
        super().__init__(**data)
        self._backend = open_reranker(self.model, url=self.url, api_key=self.api_key, timeout=self.timeout)

    def _ranked(self, query: str, texts: list[str], titles: list[Any]) -> list[tuple[int, float]]:
        """``(position, score)`` of the best ``top_n`` inputs, each read as "title text"."""
        inputs = [
            rerank_text(text, title if self.title_key else None)
            for text, title in zip(texts, titles, strict=True)
        ]
        return self._backend.rerank(query, inputs, self.top_n)
