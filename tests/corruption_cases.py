"""Damaged copies of an index, and what tansaku does with each (run as a script in a subprocess).

tests/test_corruption.py builds small indexes, then runs this file as a separate process
over a list of cases: a segfault there fails the test naming the case instead of killing
pytest. For each case (a file of the index and a kind of damage) it copies the index,
damages the copy, and records what ``tansaku check``, ``tansaku search --mode bm25`` and a
dense search did. One JSON line per case on stdout, a ``start`` line before it.

  python tests/corruption_cases.py SPEC.json   # see main()
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers import HashEncoder

QUERY = "東京の人口と富士山の高さ 日本 歴史 科学 Mount Fuji Tokyo"


def case_encoder() -> HashEncoder:
    """The encoder every case builds and searches with: words and characters hashed."""
    return HashEncoder(characters=True)


def _rng(path: Path, kind: str) -> random.Random:
    return random.Random(zlib.crc32(f"{path.name}:{kind}".encode()))


def middle(path: Path) -> None:
    """Random bytes over the middle of the file (4 KiB, or a quarter of a smaller one)."""
    size = path.stat().st_size
    n = min(4096, max(1, size // 4))
    with open(path, "r+b") as fh:
        fh.seek(size // 2 - n // 2)
        fh.write(_rng(path, "middle").randbytes(n))


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def header(path: Path) -> None:
    """Random bytes over the first 16 (every format here keeps its magic number there)."""
    with open(path, "r+b") as fh:
        fh.write(_rng(path, "header").randbytes(16))


def delete(path: Path) -> None:
    path.unlink()


def scale(path: Path) -> None:
    """An array's values times 7, same dtype and size (postings pointing past the corpus)."""
    array = np.load(path)
    np.save(path, (array * 7).astype(array.dtype))


def append(path: Path) -> None:
    """4 KiB of random bytes written past the middle: the file grows (the issue's damage)."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(_rng(path, "append").randbytes(4096))


def bad_analyzer(path: Path) -> None:
    """The manifest names an analyzer no version of tansaku has."""
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["analyzer"]["name"] = "klingon"
    manifest["analyzer"].pop("tokenizer", None)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def sqlite_pages(path: Path) -> None:
    """Every b-tree page after the first gets an invalid page type: SQLite sees the damage
    as soon as it reads the documents (random bytes in text could go unnoticed)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for offset in range(page, len(data), page):
        data[offset] = 0x77
    path.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "middle": middle,
    "truncate": truncate,
    "zero": zero,
    "header": header,
    "delete": delete,
    "scale": scale,
    "append": append,
    "bad-analyzer": bad_analyzer,
    "sqlite-pages": sqlite_pages,
}
KINDS = ("middle", "truncate", "zero", "header", "delete")  # applied to every file


def _cli(*args: str) -> tuple[int, str, str]:
    """``tansaku ARGS`` in this process: exit code, stdout, stderr (an escaping exception is
    returned as a traceback in stderr with code -1, as the real CLI would print one)."""
    from tansaku.pipeline.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        except Exception as exc:  # what the user would see as a traceback
            return -1, out.getvalue(), err.getvalue() + f"Traceback: {type(exc).__name__}: {exc}"
    return code, out.getvalue(), err.getvalue()


def _dense(path: Path) -> str:
    """A dense search through the Python API: "ok", "error: MESSAGE" or "traceback: ..."."""
    from tansaku.index import TansakuError, open_index

    try:
        index = open_index(path, encoder=case_encoder())
    except TansakuError as exc:
        return f"error: {exc}"
    except Exception as exc:
        return f"traceback: {type(exc).__name__}: {exc}"
    try:
        if index.dense is None:
            return "none"
        _, positions = index.dense.search(case_encoder().encode_queries([QUERY]), 5)
        if ((positions < -1) | (positions >= len(index))).any():
            return f"traceback: positions out of range {positions.tolist()}"
        return "ok"
    except TansakuError as exc:
        return f"error: {exc}"
    except Exception as exc:
        return f"traceback: {type(exc).__name__}: {exc}"
    finally:
        index.close()


def hits(stdout: str) -> list[str]:
    return [h["id"] for h in json.loads(stdout)["hits"]] if stdout.strip() else []


def pristine_answers(index: Path) -> dict[str, Any]:
    """What the undamaged index answers: the BM25 search's exit code and hits, the dense search."""
    search = _cli("search", str(index), QUERY, "--mode", "bm25", "--json", "-k", "5")
    return {"search": search[0], "hits": hits(search[1]), "dense": _dense(index)}


def run_case(index: Path, work: Path, rel: str, kind: str) -> dict[str, Any]:
    """Damage ``rel`` of a copy of ``index`` by ``kind``; what check and searches did."""
    case = work / f"{zlib.crc32(f'{index}:{rel}:{kind}'.encode()):08x}"
    shutil.copytree(index, case)
    try:
        DAMAGE[kind](case / rel)
        check = _cli("check", str(case))
        search = _cli("search", str(case), QUERY, "--mode", "bm25", "--json", "-k", "5")
        return {
            "file": rel,
            "kind": kind,
            "check": check[0],
            "check_out": check[1] + check[2],
            "search": search[0],
            "search_err": search[2].replace(str(case), "INDEX"),
            "hits": hits(search[1]) if search[0] == 0 else [],
            "dense": _dense(case).replace(str(case), "INDEX"),
        }
    finally:
        shutil.rmtree(case, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    """Run the cases of a spec file: ``{"work": DIR, "indexes": {NAME: PATH}, "cases":
    [[NAME, FILE, KIND], ...]}``. Prints the pristine indexes' answers, then each case."""
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    indexes = {name: Path(path) for name, path in spec["indexes"].items()}
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    pristine = {name: pristine_answers(index) for name, index in indexes.items()}
    print(json.dumps({"pristine": pristine}), flush=True)
    for name, rel, kind in spec["cases"]:
        print(json.dumps({"start": [name, rel, kind]}), flush=True)
        print(json.dumps({"case": [name, rel, kind], **run_case(indexes[name], work, rel, kind)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
