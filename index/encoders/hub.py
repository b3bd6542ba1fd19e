"""Finding models by hub id or local directory, offline-aware, with errors that say what to do.

Search machines are often offline. A failed load says whether the name was taken for a
local path or a hub id, what went wrong, and how to bring the model over by hand. Nothing
here ever substitutes another model. While a model loads, transformers' and huggingface_hub's
progress bars and load reports are hidden (:func:`quiet_loading`) unless asked for
(:func:`set_verbose_loading`, ``tansaku --verbose``).
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError

# "name" or "owner/name" as the hub spells them; anything else can only be a path
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "true", "yes", "on"}
# The proxy settings huggingface_hub honours; the reachability probe goes through them too.
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
DEFAULT_PROBE_TIMEOUT = 5.0
_verbose = False


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network access."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_local_path(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` names a directory on disk rather than a hub repository id."""
    name = os.fspath(model)
    if isinstance(model, Path) or Path(name).expanduser().exists():
        return True
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name):
        return True
    return _HUB_ID.fullmatch(name) is None


def hub_reachable(timeout: float | None = None) -> bool:
    """Whether the hub endpoint (``HF_ENDPOINT``) answers an HTTP request within ``timeout`` s.

    A TCP connection is not enough: a firewall or proxy that accepts it and never answers
    makes huggingface_hub wait for minutes (some of its requests have no timeout at all). So
    this sends one ``HEAD`` request through the same proxy settings, and the whole of it, DNS
    included, gets ``timeout`` seconds (default: ``HF_HUB_ETAG_TIMEOUT`` when set, else 5).
    Any answer below 500 counts, and so does a TLS server whose certificate this process does
    not trust (huggingface_hub may be configured to); refused, reset, silent or 5xx does not.
    """
    if timeout is None:
        timeout = _env_seconds("HF_HUB_ETAG_TIMEOUT", DEFAULT_PROBE_TIMEOUT)
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/") + "/"
    answer: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                answer.append(True)
        except urllib.error.HTTPError as exc:
            answer.append(exc.code < 500)
        except urllib.error.URLError as exc:
            answer.append(isinstance(exc.reason, ssl.SSLError))
        except (OSError, ValueError):  # timeouts, resets, a malformed HF_ENDPOINT
            answer.append(False)

    # A thread, so that a resolver that never answers cannot hold the load up either.
    thread = threading.Thread(target=probe, name="tansaku-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def offline_hint(model_id: str, option: str) -> str:
    """How to make a hub model usable on a machine without network access."""
    return (
        f"download it on a connected machine with `hf download {model_id} --local-dir DIR` "
        f"(older huggingface_hub: `huggingface-cli download {model_id} --local-dir DIR`, or "
        f"`git clone https://huggingface.co/{model_id}`), copy the directory here and pass "
        f"{option} DIR"
    )


@dataclass(frozen=True)
class ModelSource:
    """Where a model will be loaded from, decided before loading."""

    name: str  # a resolved local path or the hub id
    local: bool
    local_files_only: bool
    unreachable: bool = False


def resolve(model: str | os.PathLike[str], *, what: str, option: str) -> ModelSource:
    """Check a model name before loading; a missing local path fails here, clearly.

    With ``HF_HUB_OFFLINE`` set, or when the hub endpoint does not answer within a few
    seconds (:func:`hub_reachable`), only the local cache is used, so a model missing from it
    fails at once instead of after minutes of retries (or never, behind a silent firewall).
    """
    name = os.fspath(model)
    if looks_like_local_path(model):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"{what} model {name!r} looks like a local path, but {path} does not exist; pass "
                f"the directory that holds the model's config.json and weights, or "
                f"{offline_hint('ID', option)}"
            )
        if not path.is_dir():
            raise ModelLoadError(
                f"{what} model {name!r} looks like a local path, but {path} is a file, not a "
                f"model directory; {offline_hint('ID', option)}"
            )
        return ModelSource(str(path.resolve()), True, True)
    if hub_offline():
        return ModelSource(name, False, True)
    if not hub_reachable():
        return ModelSource(name, False, True, unreachable=True)
    return ModelSource(name, False, False)


def load_failure(source: ModelSource, exc: BaseException, *, what: str, option: str) -> str:
    """The message of a :class:`ModelLoadError` for a load that raised ``exc``."""
    text = str(exc).strip()
    cause = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    if source.local:
        missing = "" if (Path(source.name) / "config.json").is_file() else " (it has no config.json)"
        return (
            f"could not load {what} model {source.name!r}: it looks like a local path, but it is "
            f"not a loadable model directory{missing} ({cause}); pass a directory made by "
            f"save_pretrained / `hf download`, or {offline_hint('ID', option)}"
        )
    if source.unreachable:
        why = "the Hugging Face hub cannot be reached from here and it is not in the local cache"
    elif source.local_files_only:
        why = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    else:
        why = "the Hugging Face hub has no such model or could not be reached"
    return (
        f"could not load {what} model {source.name!r}: it looks like a hub id, but {why} "
        f"({cause}). To use it offline, {offline_hint(source.name, option)}"
    )


def set_verbose_loading(verbose: bool) -> bool:
    """Show (True) or hide (False, the default) the model libraries' output while models load:
    transformers' "Loading weights" bars and load reports, huggingface_hub's download bars.
    Returns the previous setting."""
    global _verbose
    previous, _verbose = _verbose, bool(verbose)
    return previous


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Load a model without transformers' and huggingface_hub's progress bars and reports.

    Their log levels drop to errors and their bars are switched off for the duration, then
    restored as they were. A no-op after ``set_verbose_loading(True)``.
    """
    if _verbose:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    levels = hf_logging.get_verbosity(), hub_utils.logging.get_verbosity()
    bars, hub_bars = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    # huggingface_hub warns when HF_HUB_DISABLE_PROGRESS_BARS overrides a switch; it may.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_logging.set_verbosity_error()
        hub_utils.logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # transformers' and huggingface_hub's
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_logging.set_verbosity(levels[0])
            hub_utils.logging.set_verbosity(levels[1])
            if bars:
                hf_logging.enable_progress_bar()  # switches huggingface_hub's on as well
            if hub_bars:
                hub_utils.enable_progress_bars()
            elif bars:
                hub_utils.disable_progress_bars()
