"""Warnings about a valid filter that cannot match: a field no document of the index has."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .filters import Filter


class MaskSource(Protocol):
    """What a sharded index asks of one shard's masks: :class:`FilterMasks`, or a proxy for
    the masks of a shard served elsewhere."""

    def mask(self, flt: Filter) -> np.ndarray: ...

    def has_field(self, field: str) -> bool: ...

    def field_names(self) -> tuple[str, ...]: ...


def unknown_field_warnings(flt: Filter | None, masks: Sequence[MaskSource]) -> list[str]:
    """One warning per field ``flt`` names that no document has (over every shard's ``masks``).

    Such a condition is almost always a typo (``yaer`` for ``year``): an equality on it matches
    nothing, silently. The warning names the closest known field and lists the known ones.
    """
    if flt is None:
        return []
    missing = [f for f in flt.fields() if not any(m.has_field(f) for m in masks)]
    if not missing:
        return []
    known = sorted({name for m in masks for name in m.field_names()})
    listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    out = []
    for field in missing:
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fields = f"fields: {listed}" if known else "the documents have no metadata"
        out.append(f"filter field {field!r} is in no document of this index ({hint}{fields})")
    return out
