"""Load a sentence-transformers CrossEncoder by hub id or local directory, failing clearly."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tansaku.index.encoders.hub import (
    hub_offline,
    load_failure,
    looks_like_local_path,
    quiet_loading,
    resolve,
)
from tansaku.index.errors import ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

__all__ = ["hub_offline", "load_cross_encoder", "looks_like_local_path"]


def load_cross_encoder(
    model: str | os.PathLike[str], *, device: str | None = None, **kwargs: Any
) -> CrossEncoder:
    """Load ``model`` (hub id or local directory) as a ``sentence_transformers.CrossEncoder``.

    Offline (``HF_HUB_OFFLINE``, or the hub unreachable) only the local cache is used, so a
    missing model fails at once. Every failure becomes a :class:`ModelLoadError` chained to
    the original exception; no other model is ever substituted. The libraries' progress bars
    and load reports are hidden unless ``tansaku --verbose`` (see :func:`quiet_loading`).
    """
    source = resolve(model, what="reranker", option="--reranker")
    try:
        from sentence_transformers import CrossEncoder

        with quiet_loading():
            return CrossEncoder(
                source.name, device=device, local_files_only=source.local_files_only, **kwargs
            )
    except Exception as exc:
        raise ModelLoadError(load_failure(source, exc, what="reranker", option="--reranker")) from exc
