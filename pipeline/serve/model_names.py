"""Which ``model`` names a rerank request may carry.

Clients send their own defaults (``rerank-english-v3.0``, ``jina-reranker-v1-base-en``, Open
WebUI's ``reranker``...). A server has one reranker, so by default any name is accepted and the
answer names the model really served, as Text Embeddings Inference does. With
``--strict-model-name`` only the served name and its aliases are accepted, others get a 404.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError


@dataclass(frozen=True)
class ModelNames:
    """The served model's public ``name``, the ``aliases`` that also name it, and the policy."""

    name: str
    aliases: frozenset[str]
    strict: bool = False

    def check(self, model: str | None) -> None:
        """Accept no model (or ""), any name when not strict; else a 404 naming ``model``."""
        if self.strict and model and model not in self.aliases:
            raise ApiError(
                404,
                f"unknown model {model!r}: this server serves {self.name!r} (--strict-model-name)",
                field="model",
                kind="model_not_found",
            )
