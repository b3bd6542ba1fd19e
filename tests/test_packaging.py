"""The wheel installs one `tansaku` namespace (no bare index/pipeline packages) and works."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds,
    # and the suite never writes into the checkout.
    source = tmp_path_factory.mktemp("source") / "tansaku"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "site"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("tansaku-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("tansaku-")}
    assert tops == {"tansaku"}, tops  # never top-level `index`, `pipeline`, ...
    for module in (
        "tansaku/__init__.py",
        "tansaku/index/bm25.py",
        "tansaku/retrieve/hybrid.py",
        "tansaku/rerank/__init__.py",
        "tansaku/pipeline/cli/__init__.py",
        "tansaku/index/data/sample.jsonl",
    ):
        assert module in names
    # every module of the source folders ships (a subpackage missing from pyproject would not)
    folders = {"index": "index", "retrieve": "retrieve", "rerank": "rerank", "pipeline": "pipeline"}
    for folder, package in folders.items():
        for source in (REPO / folder).rglob("*.py"):
            rel = source.relative_to(REPO / folder)
            if rel.parts[0] != "_root":
                assert f"tansaku/{package}/{rel.as_posix()}" in names, rel
    assert "tansaku/py.typed" in names
    assert not any("tests/" in n or n.endswith(".pkl") for n in names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tansaku = tansaku.pipeline.cli:main" in entry


def test_wheel_imports_and_runs(wheel, tmp_path):
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # -S: no site-packages processing, so the editable install of this checkout is invisible;
    # dependencies come from site-packages on PYTHONPATH, tansaku only from the wheel.
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import tansaku, tansaku.index as ix, tansaku.pipeline.cli as cli\n"
        "assert tansaku.__file__.startswith({!r}), tansaku.__file__\n"
        "from tansaku.index import build_index, read_file, SAMPLE_CORPUS\n"
        "idx = build_index({!r}, read_file(SAMPLE_CORPUS), progress=False)\n"
        "s = tansaku.open({!r})\n"
        "print(s.search('富士山', top_n=1).hits[0].doc_id)\n"
    ).format(str(target), str(tmp_path / "idx"), str(tmp_path / "idx"))
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{target}:{deps}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ja-001"
