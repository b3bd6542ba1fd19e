"""One local Ray cluster per test session (2 CPUs, no dashboard, files in a temporary directory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """A local cluster shared by every Ray test; shut down at the session's end.

    Ray writes an auth token under HOME and its session files under its temp dir: both point into
    the test's temporary directory so nothing is left in the user's home or /tmp/ray.
    """
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tansaku[ray]')")
    base = tmp_path_factory.mktemp("ray")
    home = Path(base) / "home"
    home.mkdir()
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_USAGE_STATS_ENABLED")}
    os.environ["HOME"] = str(home)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(Path(base) / "t"),
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - Serve may never have started
            pass
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
