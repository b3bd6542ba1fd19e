"""The server's default limits and the one check of positive-integer settings.

Standard library only: ``tansaku serve --help`` shows these defaults, and the CLI must not
import FastAPI, numpy or torch just to print its help.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_DOCUMENTS = 10_000
DEFAULT_MAX_BODY_BYTES = 10 * 2**20
DEFAULT_MAX_QUEUE = 64

# Connections (see .connections): a client gets this long to send its request head, then its
# body; an idle keep-alive connection is closed after DEFAULT_KEEP_ALIVE_TIMEOUT (uvicorn's
# default). 256 connections stay well under the usual 1,024 open-file limit, with room for
# the index, the model and the logs.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_HEADER_BYTES = 16 * 2**10  # h11's own default, set explicitly

# Work per request (see .work_limits): Cohere's recommended maximum of 1,000 documents, and
# about 1,000 passages of 500 tokens (top-100 reranking at max_length 512 uses a fifth).
DEFAULT_MAX_PAIRS = 1_000
DEFAULT_MAX_TOKENS = 500_000
# Time from entering the inference queue to the answer; longer is a 504.
DEFAULT_REQUEST_TIMEOUT = 60.0


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


def check_positive_numbers(values: Mapping[str, Any], *, options: bool = False) -> None:
    """A ConfigError naming the first of ``values`` that is not a finite number > 0 (seconds).

    None is allowed (no limit, or "not given" for ``options``, as in :func:`check_positive_ints`).
    """
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            from tansaku.index.errors import ConfigError  # only now: see the module docstring

            if options:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number of seconds above 0")
            raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
