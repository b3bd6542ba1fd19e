"""A damaged index is one clear error, or a finding of `tansaku check`: never a crash, a
traceback, or a wrong answer that `check` misses (issue 27, integrity).

Every file of a small index and of a two-shard one is damaged in turn (random bytes in the
middle, truncated, zeroed, a bad header, deleted; and the issue's own cases), each in a
fresh copy. The cases run in a separate process (tests/corruption_cases.py) so that a
segfault fails the test that caused it rather than killing pytest; the index is built once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from corruption_cases import DAMAGE, KINDS, QUERY, case_encoder, pristine_answers, run_case, sqlite_pages
from helpers import sample_rows
from tansaku.index import (
    BuildConfig,
    FaissParams,
    IndexCorruptError,
    build_index,
    create_field_index,
    open_index,
    read_dicts,
    verify_index,
)
from tansaku.index.checksums import file_checksum, index_files
from tansaku.index.update import update_index

TESTS = Path(__file__).resolve().parent
BM25_FILES = [
    f"bm25/{name}"
    for name in (
        "dense_rows.npy",
        "dense_weights.npy",
        "doc_len.npy",
        "indptr.npy",
        "postings.npy",
        "tf.npy",
        "vocab.json",
        "weights.npy",
    )
]
# Every file of each test index: test_every_file_is_covered keeps these lists complete.
FILES = {
    "one": ["manifest.json", "corpus.sqlite", "ids.npy", *BM25_FILES, "dense/faiss.index"],
    "two": [
        "manifest.json",
        "stats/df.npy",
        "stats/vocab.json",
        *(
            f"shards/{shard}/{rel}"
            for shard in ("000", "001")
            for rel in ("corpus.sqlite", "ids.npy", *BM25_FILES, "dense/faiss.index", "dense/vectors.npy")
        ),
    ],
}
# Damage the cheap checks at open must see (the rest only `tansaku check` may find).
SEEN_AT_OPEN = {"truncate", "zero", "header", "delete", "scale", "append", "bad-analyzer"}

# The fast tier: the issue's defects, and a case of each part of the sharded index. Damage
# the BM25 kernel could crash on runs in a child process (CRASH_PRONE); the rest, which at
# worst raised a traceback, in this one (IN_PROCESS).
CRASH_PRONE = [
    ("one", "bm25/postings.npy", "append"),  # 4 KiB of random bytes: was SIGSEGV
    ("one", "bm25/postings.npy", "scale"),  # was garbage, silently
    ("one", "bm25/indptr.npy", "middle"),
    ("one", "bm25/dense_rows.npy", "middle"),
    ("two", "shards/001/bm25/postings.npy", "middle"),
]
IN_PROCESS = [
    ("one", "corpus.sqlite", "truncate"),
    ("one", "corpus.sqlite", "zero"),
    ("one", "corpus.sqlite", "sqlite-pages"),  # damage SQLite sees only when reading rows
    ("one", "dense/faiss.index", "truncate"),  # also broke --mode bm25
    ("one", "dense/faiss.index", "header"),
    ("one", "ids.npy", "truncate"),
    ("one", "bm25/vocab.json", "zero"),
    ("one", "manifest.json", "bad-analyzer"),
    ("two", "shards/000/dense/vectors.npy", "truncate"),
    ("two", "stats/vocab.json", "header"),
]
FULL = [(name, rel, kind) for name, files in FILES.items() for rel in files for kind in KINDS]
FULL = [case for case in FULL if case not in CRASH_PRONE + IN_PROCESS]


def case_id(case: tuple[str, str, str]) -> str:
    return ":".join(case)


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Flat index and a two-shard IVFPQ one (with vectors.npy) over the sample corpus."""
    root = tmp_path_factory.mktemp("damage")
    rows = sample_rows()
    build_index(root / "one", read_dicts(rows), encoder=case_encoder(), progress=False).close()
    ivfpq = FaissParams(kind="ivfpq", nlist=2, nbits=4, nprobe=2)
    config = BuildConfig(shards=2, faiss=ivfpq)
    build_index(root / "two", read_dicts(rows), config, encoder=case_encoder(), progress=False).close()
    return {"one": root / "one", "two": root / "two"}


def run_cases(indexes: dict[str, Path], cases: list[tuple[str, str, str]], work: Path) -> dict[str, Any]:
    """Run ``cases`` in one child process; their outcomes by case id, and the pristine answers.

    A child that dies (a segfault: exit -11) fails here, naming the case it was running.
    """
    spec = work / "spec.json"
    work.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        json.dumps(
            {
                "work": str(work / "cases"),
                "indexes": {k: str(v) for k, v in indexes.items()},
                "cases": cases,
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, str(TESTS / "corruption_cases.py"), str(spec)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        started = [line["start"] for line in lines if "start" in line]
        where = f"while damaging {':'.join(started[-1])}" if started else "before any case"
        pytest.fail(f"the case runner died (exit {proc.returncode}) {where}:\n{proc.stderr[-3000:]}")
    results: dict[str, Any] = {"pristine": lines[0]["pristine"]}
    for line in lines:
        if "case" in line:
            results[":".join(line["case"])] = line
    return results


@pytest.fixture(scope="module")
def crash_prone(indexes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_cases(indexes, CRASH_PRONE, tmp_path_factory.mktemp("fast"))


@pytest.fixture(scope="module")
def pristine(indexes: dict[str, Path]) -> dict[str, Any]:
    return {name: pristine_answers(path) for name, path in indexes.items()}


@pytest.fixture(scope="module")
def full_results(indexes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_cases(indexes, FULL, tmp_path_factory.mktemp("full"))


def assert_handled(outcome: dict[str, Any], pristine: dict[str, Any]) -> None:
    """What every damaged copy must come to (see the module docstring)."""
    rel, kind = outcome["file"], outcome["kind"]
    dense_file = "/dense/" in f"/{rel}"
    # `tansaku check` always finds it, and names the file
    report = outcome["check_out"]
    assert outcome["check"] == 2, report
    assert any(line.startswith(f"{rel}: ") for line in report.splitlines()), report
    # a BM25 search: one clear line, or an answer
    err = outcome["search_err"]
    assert outcome["search"] in (0, 2), err
    if outcome["search"] == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tansaku: "), err
        assert rel in err and "rebuild the index or restore it" in err, err
        assert "Traceback" not in err
    elif dense_file:  # a BM25 search never reads the dense part: the same answer
        assert outcome["hits"] == pristine["hits"]
    else:
        assert kind not in SEEN_AT_OPEN, f"{rel} ({kind}) opened and answered: {outcome['hits']}"
    # a dense search: an answer, or the clear error
    dense = outcome["dense"]
    assert not dense.startswith("traceback"), dense
    if dense_file and kind in SEEN_AT_OPEN:
        assert dense.startswith("error: ") and rel in dense, dense


@pytest.mark.parametrize("case", CRASH_PRONE, ids=case_id)
def test_damage_the_kernel_reads_is_a_clear_error(case, crash_prone):
    outcome = crash_prone[case_id(case)]
    assert_handled(outcome, crash_prone["pristine"][case[0]])
    assert outcome["search"] == 2  # each is seen at open, before the kernel runs


@pytest.mark.parametrize("case", IN_PROCESS, ids=case_id)
def test_damage_is_a_clear_error_or_found_by_check(case, indexes, pristine, tmp_path):
    name, rel, kind = case
    outcome = run_case(indexes[name], tmp_path, rel, kind)
    assert_handled(outcome, pristine[name])
    if "/dense/" in f"/{rel}":
        assert outcome["search"] == 0  # a bad FAISS file no longer breaks --mode bm25
    else:
        assert outcome["search"] == 2
    if kind == "bad-analyzer":
        assert "manifest.json names an analyzer" in outcome["search_err"]


@pytest.mark.slow
@pytest.mark.parametrize("case", FULL, ids=case_id)
def test_every_file_and_every_damage(case, full_results):
    assert_handled(full_results[case_id(case)], full_results["pristine"][case[0]])


def test_the_pristine_indexes_answer(crash_prone, pristine):
    for answers in (crash_prone["pristine"], pristine):
        assert answers["one"]["search"] == 0 and answers["one"]["hits"] and answers["one"]["dense"] == "ok"
        assert answers["two"]["hits"] == answers["one"]["hits"] and answers["two"]["dense"] == "ok"
    scaled = crash_prone["one:bm25/postings.npy:scale"]["search_err"]
    assert "bm25/postings.npy names documents outside the 56 of the corpus" in scaled


def test_every_file_is_covered(indexes):
    for name, path in indexes.items():
        assert sorted(["manifest.json", *index_files(path)]) == sorted(FILES[name])


def test_the_manifest_records_every_file(indexes, capsys):
    from tansaku.pipeline.cli.main import main

    for path in indexes.values():
        files = json.loads((path / "manifest.json").read_text(encoding="utf-8"))["files"]
        assert sorted(files) == index_files(path)
        for rel, entry in files.items():
            assert entry == {"size": (path / rel).stat().st_size, "crc32": file_checksum(path / rel)}
        report = verify_index(path)
        assert report.ok and report.checksums and report.files == len(files)
        assert main(["check", str(path)]) == 0
        assert capsys.readouterr().out.startswith(f"ok: {path} ({len(files)} files match their checksums)")
    assert main(["check", str(indexes["one"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_an_index_without_checksums_opens_unverified(indexes, tmp_path, capsys):
    """A manifest written before checksums opens as before; check says what it could not verify."""
    from tansaku.pipeline.cli.main import main

    path = tmp_path / "old"
    shutil.copytree(indexes["one"], path)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    del manifest["files"]
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    fresh, old = open_index(indexes["one"]), open_index(path)
    tokens = fresh.analyzer.tokenize(QUERY)
    for a, b in zip(old.bm25.top_k(tokens, 10), fresh.bm25.top_k(tokens, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh.close()
    old.close()
    report = verify_index(path)
    assert report.ok and not report.checksums and report.files == 0
    assert main(["check", str(path)]) == 0
    assert "no checksums recorded" in capsys.readouterr().out
    # without recorded sizes, the headers still see a truncated array
    DAMAGE["truncate"](path / "bm25" / "postings.npy")
    with pytest.raises(IndexCorruptError, match="bm25/postings.npy is .* bytes where its header says"):
        open_index(path)
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().out.startswith("bm25/postings.npy: ")


def test_updates_record_checksums_and_never_bless_damage(tmp_path):
    rows = sample_rows()
    path = tmp_path / "sharded"
    build_index(path, read_dicts(rows[:30]), BuildConfig(shard_docs=15), progress=False).close()
    DAMAGE["middle"](path / "shards" / "000" / "ids.npy")  # same size, same header
    # shard 000 is unchanged by this update: its files are linked into the new version
    update_index(path, read_dicts(rows[30:34]), progress=False)
    report = verify_index(path)
    assert [p.file for p in report.problems] == ["shards/000/ids.npy"]
    # a healthy index stays verifiable through updates, sharded or not
    single = tmp_path / "single"
    build_index(single, read_dicts(rows[:20]), progress=False).close()
    update_index(single, read_dicts(rows[20:25]), ["ja-001"], progress=False)
    update_index(path, (), [rows[20]["id"]], progress=False)  # from shard 001
    assert verify_index(single).ok
    assert [p.file for p in verify_index(path).problems] == ["shards/000/ids.npy"]


def test_a_field_index_is_recorded(tmp_path):
    path = tmp_path / "idx"
    build_index(path, read_dicts(sample_rows()[:10]), progress=False).close()
    create_field_index(path, "lang")
    assert verify_index(path).ok  # the corpus changed in place: its new checksum is recorded
    DAMAGE["middle"](path / "corpus.sqlite")
    with pytest.raises(IndexCorruptError, match="corpus.sqlite does not match its checksum"):
        create_field_index(path, "year")  # never records a damaged corpus as good


def test_the_server_answers_damage_in_json_and_keeps_serving(indexes, tmp_path, servers):
    from tansaku.pipeline.api import SearchConfig, Searcher
    from tansaku.pipeline.serve import create_app

    path = tmp_path / "served"
    shutil.copytree(indexes["one"], path)
    DAMAGE["header"](path / "dense" / "faiss.index")
    sqlite_pages(path / "corpus.sqlite")  # both beyond what an open checks
    searcher = Searcher(open_index(path, encoder=case_encoder()), SearchConfig(mode="bm25"))
    served = servers.start(create_app(searcher, None))
    with httpx.Client(base_url=served.url, timeout=60) as http:
        for mode, file in (("dense", "dense/faiss.index"), ("bm25", "corpus.sqlite"), ("hybrid", "faiss")):
            res = http.post("/v1/search", json={"query": QUERY, "mode": mode})
            assert res.status_code == 500, res.text
            message = res.json()["error"]["message"]
            assert file in message and "rebuild the index or restore it" in message, message
            assert http.get("/health").status_code == 200


@pytest.mark.slow
def test_the_cli_exits_2_on_the_issue_damage(indexes, tmp_path):
    """The real `tansaku` process: one line and exit 2, where it died with SIGSEGV (139)."""
    path = tmp_path / "idx"
    shutil.copytree(indexes["one"], path)
    DAMAGE["append"](path / "bm25" / "postings.npy")
    for args in (["search", str(path), QUERY, "--mode", "bm25"], ["check", str(path)]):
        proc = subprocess.run(
            [sys.executable, "-m", "tansaku.pipeline.cli", *args], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "bm25/postings.npy" in proc.stdout + proc.stderr
