"""What each ``tansaku`` command imports, model loading's output, and an unreachable hub.

Every check runs the CLI in a fresh interpreter (a subprocess), the way a shell runs it:
this test process has long since imported everything.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fixtures_models import MAX_POSITIONS, TINY_SHAPE, bert_tokenizer, save_model, seeded
from helpers import write_jsonl
from tansaku.index import SAMPLE_CORPUS, BuildConfig, build_index, read_file

# Loaded by `--help` and argument errors: none of these (the index stack and the models).
INDEX_STACK = {"numpy", "scipy", "numba", "faiss", "sqlite_utils", "pandas", "torch"}
# Loaded by commands that need no model: none of these.
MODEL_STACK = {"torch", "transformers", "sentence_transformers", "faiss", "sqlite_utils", "pandas"}

# Runs main() on each argv in turn and records the top-level modules loaded after each one.
RUN_MAIN = r"""
import json, sys
from tansaku.pipeline.cli import main

report = []
for argv in json.loads(sys.argv[2]):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    sys.stdout.flush()
    print("=== done", file=sys.stderr, flush=True)
    report.append({"argv": argv, "rc": rc, "modules": sorted({m.split(".")[0] for m in sys.modules})})
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    json.dump(report, fh)
"""


def run_main(
    tmp_path: Path, argvs: Sequence[Sequence[str]], env: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each argv's exit status and modules (cumulative: one process), and each one's stderr."""
    out = tmp_path / "report.json"
    argv_json = json.dumps([[str(a) for a in argv] for argv in argvs])
    done = subprocess.run(
        [sys.executable, "-c", RUN_MAIN, str(out), argv_json],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text(encoding="utf-8")), done.stderr.split("=== done\n")


def loaded(report: list[dict[str, Any]], forbidden: set[str]) -> list[str]:
    """``command: modules`` for each command that loaded a forbidden module first."""
    seen: set[str] = set()
    found = []
    for entry in report:
        new = (forbidden & set(entry["modules"])) - seen
        if new:
            found.append(f"{' '.join(entry['argv'])}: {', '.join(sorted(new))}")
        seen |= new
    return found


COMMANDS = ("build", "search", "rerank", "eval", "add", "delete", "serve", "models", "train-reranker")


def test_help_and_argument_errors_load_no_index_stack(tmp_path: Path) -> None:
    helps = [["--help"]] + [[command, "--help"] for command in COMMANDS]
    errors = [
        ["search"],  # missing arguments
        ["search", "idx", "q", "--mode", "nope"],  # a bad choice
        ["add", "idx", "docs.jsonl", "--max-chars", "many"],  # a bad number
        ["frobnicate"],  # no such command
    ]
    report, _ = run_main(tmp_path, helps + errors)
    assert [entry["rc"] for entry in report] == [0] * len(helps) + [2] * len(errors)
    assert not loaded(report, INDEX_STACK)


@pytest.fixture(scope="module")
def bm25_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-imports") / "index"
    build_index(path, read_file(SAMPLE_CORPUS), BuildConfig(encoder="none"), progress=False).close()
    return path


@pytest.mark.slow
def test_commands_without_a_model_load_no_model_stack(bm25_only: Path, tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "new.jsonl", [{"id": "new-1", "title": "追加", "text": "新しい文書です。"}])
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 ja-001 1\nq2 0 ja-002 1\n", encoding="utf-8")
    runs = []
    for name, lines in (("a", ["ja-001", "ja-003"]), ("b", ["ja-003", "ja-001"])):
        path = tmp_path / f"{name}.run"
        rows = [
            f"{q} Q0 {doc} {rank} {3 - rank} {name}"
            for q in ("q1", "q2")
            for rank, doc in enumerate(lines, 1)
        ]
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        runs.append(path)
    report, _ = run_main(
        tmp_path,
        [
            ["search", bm25_only, "富士山の高さ", "-k", "3"],
            ["search", bm25_only, "富士山", "--filter", '{"lang": "ja"}', "--json"],
            ["add", bm25_only, docs, "-q"],
            ["delete", bm25_only, "--ids", "new-1", "-q"],
            ["eval", "--run", runs[0], "--qrels", qrels],
            ["eval", "--run", runs[0], "--run", runs[1], "--qrels", qrels],
        ],
    )
    assert [entry["rc"] for entry in report] == [0] * 6
    assert not loaded(report, MODEL_STACK)


def test_eval_of_one_run_file_loads_no_search_stack(tmp_path: Path) -> None:
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 1\n", encoding="utf-8")
    run = tmp_path / "a.run"
    run.write_text("q1 Q0 d1 1 2.0 a\nq1 Q0 d2 2 1.0 a\n", encoding="utf-8")
    report, _ = run_main(tmp_path, [["eval", "--run", run, "--qrels", qrels, "--json"]])
    assert report[0]["rc"] == 0
    assert not loaded(report, {"numba", "scipy", *MODEL_STACK})


# -- model loading: quiet unless --verbose ----------------------------------------------------


@pytest.fixture(scope="module")
def headless_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT without a classification head: loading it as a reranker has a load report."""
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("headless-bert")
    tokenizer = bert_tokenizer(directory)
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, **TINY_SHAPE)
    with seeded():
        model = BertModel(config)
    return save_model(model, tokenizer, directory)


@pytest.mark.slow
def test_model_loading_is_quiet_unless_verbose(headless_bert_dir: Path, tmp_path: Path) -> None:
    rerank = ["rerank", "--model", headless_bert_dir, "東京", "東京は日本の首都です。", "猫"]
    report, stderr = run_main(tmp_path, [rerank, ["--verbose", *rerank], [*rerank, "--verbose"]])
    assert [entry["rc"] for entry in report] == [0, 0, 0]
    quiet, verbose, verbose_after = stderr[:3]
    assert "Loading weights" not in quiet and "LOAD REPORT" not in quiet, quiet
    for shown in (verbose, verbose_after):
        assert "Loading weights" in shown and "LOAD REPORT" in shown and "classifier.weight" in shown


# -- a hub that never answers ------------------------------------------------------------------


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A 127.0.0.1 port that accepts connections (the kernel's backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


LOAD_FROM_HUB = r"""
import json, sys, time
import sentence_transformers  # imported first: only the load is timed
from tansaku.index.encoders.base import SentenceTransformerEncoder
from tansaku.index.errors import ModelLoadError
from tansaku.rerank.loading import load_cross_encoder

result = {}
for what, load in (("reranker", load_cross_encoder), ("encoder", SentenceTransformerEncoder)):
    started = time.monotonic()
    try:
        load("tansaku-tests/no-such-model")
        result[what] = {"error": None}
    except ModelLoadError as exc:
        result[what] = {"error": str(exc), "seconds": time.monotonic() - started}
print(json.dumps(result))
"""


@pytest.mark.slow
def test_a_hub_that_never_answers_fails_fast(silent_endpoint: str, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT"}
        and not k.lower().endswith("_proxy")
    }
    env.update(HF_ENDPOINT=silent_endpoint, HF_HOME=str(tmp_path / "hf-home"))
    # Before the probe, huggingface_hub waited on the silent socket for good (no timeout).
    done = subprocess.run(
        [sys.executable, "-c", LOAD_FROM_HUB], capture_output=True, text=True, timeout=240, env=env
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    for what, option in (("reranker", "--reranker"), ("encoder", "--encoder")):
        error = result[what]["error"]
        assert error is not None
        assert "tansaku-tests/no-such-model" in error and "cannot be reached" in error
        assert "hf download tansaku-tests/no-such-model --local-dir DIR" in error and option in error
        assert result[what]["seconds"] < 30
