"""The server's default limits and the one check of positive-integer settings.

Standard library only: ``tansaku serve --help`` shows these defaults, and the CLI must not
import FastAPI, numpy or torch just to print its help.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_MAX_DOCUMENTS = 10_000
DEFAULT_MAX_BODY_BYTES = 10 * 2**20
DEFAULT_MAX_QUEUE = 64


def check_positive_ints(values: Mapping[str, Any], *, options: bool = False) -> None:
    """A ConfigError naming the first of ``values`` that is not an integer >= 1.

    ``options``: the names are ``tansaku serve`` options (``max_documents`` is reported as
    ``--max-documents``) and None means "not given", which is allowed.
    """
    for name, value in values.items():
        if options and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            from tansaku.index.errors import ConfigError  # only now: see the module docstring

            if options:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
