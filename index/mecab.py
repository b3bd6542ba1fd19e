"""One MeCab tagger per process, shared by every Japanese analyzer.

fugashi never unmaps a Tagger's dictionary: each ``fugashi.Tagger()`` leaves ~2.4 MB of
unidic-lite mappings resident for good (measured: 40 Taggers created and deleted, +96 MB),
so an analyzer per opened index made a long-running server grow with every index update.
MeCab nodes are only valid until the tagger's next parse, so callers read them under the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import ConfigError

_lock = threading.Lock()
_tagger: Any = None


def _create() -> Any:
    try:
        import fugashi
        import unidic_lite  # noqa: F401  (the dictionary fugashi's default Tagger finds)
    except ImportError as exc:  # pragma: no cover - both are hard dependencies
        raise ConfigError(
            "the Japanese analyzer needs fugashi and unidic-lite: pip install fugashi unidic-lite"
        ) from exc
    return fugashi.Tagger()


@contextmanager
def parsed(text: str) -> Iterator[list[Any]]:
    """The MeCab words of ``text``; read them inside the ``with`` block only."""
    global _tagger
    with _lock:
        if _tagger is None:
            _tagger = _create()  # created on first use: ~50 ms, and it cannot be pickled
        yield _tagger(text)
