"""Type-check tansaku as it installs: ``python scripts/check_types.py`` (run by ``.ci/run``).

The four stage folders (``index/``, ``retrieve/``, ``rerank/``, ``pipeline/``) install under
one ``tansaku`` package (pyproject's ``package-dir``), which mypy cannot see in the source
tree. This lays the package out as it installs, with symlinks in a temporary directory, and
runs ``mypy -p tansaku`` there with the project's mypy settings, so imports of ``tansaku.*``
across folders are checked. Exit status: mypy's.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("index", "retrieve", "rerank", "pipeline")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tansaku-types-") as tmp:
        package = Path(tmp) / "tansaku"
        package.mkdir()
        for entry in (REPO / "pipeline" / "_root").iterdir():
            if entry.suffix in (".py", ".typed"):
                (package / entry.name).symlink_to(entry)
        for stage in STAGES:
            (package / stage).symlink_to(REPO / stage, target_is_directory=True)
        command = [
            sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
            "--cache-dir", str(Path(tmp) / ".mypy_cache"), "-p", "tansaku",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=tmp, check=False, capture_output=True, text=True)
        # Name files as they are in the repository, not as symlinks in the temporary tree.
        output = done.stdout.replace("tansaku/pipeline/_root/", "pipeline/_root/")
        for stage in STAGES:
            output = output.replace(f"tansaku/{stage}/", f"{stage}/")
        sys.stdout.write(output)
        sys.stderr.write(done.stderr)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
