"""Connecting to Ray: one clear error when it is missing, one place that starts a local cluster."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from tansaku.index.errors import TansakuError

INSTALL_HINT = "pip install 'tansaku[ray]'"


def require_ray() -> ModuleType:
    """Import Ray or raise a TansakuError that says how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise TansakuError(f"--ray needs Ray (not installed): {INSTALL_HINT}") from exc


def connect(address: str | None = None, *, num_cpus: float | None = None) -> ModuleType:
    """Join the cluster at ADDRESS, reuse the one this process already joined, or start a local one.

    A local cluster starts without the dashboard and without usage reporting; ``address`` may be
    ``"auto"`` (the cluster this machine belongs to) or ``"ray://host:10001"`` (Ray Client).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            ray.init(address=address, configure_logging=False, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    except ConnectionError as exc:
        raise TansakuError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
    return ray
