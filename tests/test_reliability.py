"""Bad input never corrupts an index; nothing unsafe is loaded from disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import sample_rows, tree_snapshot
from tansaku.index import FieldMap, Index, IngestError, build_index, read_dicts, read_file
from tansaku.index.update import update_index

REPO = Path(__file__).resolve().parent.parent
GOOD = '{"id": "ok-1", "text": "正しい文書です。"}'

# (name, file suffix, raw bytes, what the error must name)
JSONL_CASES = [
    ("truncated line", ".jsonl", GOOD + '\n{"id": "t", "text": "途中で', "line 2"),
    ("not an object", ".jsonl", GOOD + "\n[1, 2, 3]", "line 2"),
    ("string instead of object", ".jsonl", GOOD + '\n"just text"', "line 2"),
    ("missing text", ".jsonl", GOOD + '\n{"id": "x"}', "'text'"),
    ("missing id", ".jsonl", GOOD + '\n{"text": "本文"}', "'id'"),
    ("null id", ".jsonl", GOOD + '\n{"id": null, "text": "本文"}', "'id'"),
    ("bool id", ".jsonl", GOOD + '\n{"id": true, "text": "本文"}', "'id'"),
    ("float id", ".jsonl", GOOD + '\n{"id": 1.5, "text": "本文"}', "'id'"),
    ("text is a number", ".jsonl", GOOD + '\n{"id": "n", "text": 42}', "'text'"),
    ("text is a list", ".jsonl", GOOD + '\n{"id": "n", "text": ["a"]}', "'text'"),
    ("text is an object", ".jsonl", GOOD + '\n{"id": "n", "text": {"a": 1}}', "'text'"),
    ("empty text", ".jsonl", GOOD + '\n{"id": "e", "text": ""}', "'text'"),
    ("whitespace text", ".jsonl", GOOD + '\n{"id": "e", "text": " \\n\\t　"}', "'text'"),
    ("title is a number", ".jsonl", GOOD + '\n{"id": "e", "text": "x", "title": 3}', "'title'"),
    ("nested metadata", ".jsonl", GOOD + '\n{"id": "m", "text": "x", "k": {"a": {"b": 1}}}', "'k'"),
    ("metadata not object", ".jsonl", GOOD + '\n{"id": "m", "text": "x", "metadata": 5}', "'metadata'"),
    ("NaN metadata", ".jsonl", GOOD + '\n{"id": "m", "text": "x", "score": NaN}', "'score'"),
    ("duplicate id", ".jsonl", GOOD + "\n" + GOOD, "duplicate id 'ok-1'"),
    ("non-UTF-8 bytes", ".jsonl", GOOD.encode() + b'\n{"id": "u", "text": "\xff\xfe"}', "line 2"),
    ("latin-1 file", ".jsonl", '{"id": "l", "text": "café"}'.encode("latin-1"), "UTF-8"),
    ("10 MB document", ".jsonl", GOOD + "\n" + json.dumps({"id": "big", "text": "あ" * 10_000_000}), "limit"),
    ("trailing garbage", ".jsonl", GOOD + "\n" + GOOD[:-1] + ', "x": 1}}', "line 2"),
    ("csv missing column", ".csv", "id,body\n1,x\n", "'text'"),
    ("csv extra cells", ".csv", "id,text\n1,x\n2,y,z\n", "line 3"),
    ("csv empty text", ".csv", "id,text\n1,x\n2,\n", "'text'"),
    ("csv unterminated quote", ".csv", 'id,text\n1,"never closed\n', "line"),
    ("csv duplicate id", ".csv", "id,text\n1,x\n1,y\n", "duplicate id '1'"),
    ("csv non-UTF-8", ".csv", b"id,text\n1,x\n2,\xff\n", "UTF-8"),
    ("tsv missing id", ".tsv", "id\ttext\n\tx\n", "'id'"),
    ("empty file", ".jsonl", "", "no documents"),
    (
        "50,000-deep metadata",
        ".jsonl",
        GOOD + '\n{"id": "d", "text": "x", "k": ' + "[" * 50_000 + "]" * 50_000 + "}",
        "line 2",
    ),
    (
        "5,000-digit integer",
        ".jsonl",
        GOOD + '\n{"id": "b", "text": "x", "n": ' + "9" * 5_000 + "}",
        "line 2",
    ),
    ("integer past 64 bits", ".jsonl", GOOD + '\n{"id": "b", "text": "x", "n": ' + "9" * 30 + "}", "'n'"),
    ("lone surrogate in text", ".jsonl", GOOD + '\n{"id": "s", "text": "a\\ud800b"}', "'text'"),
    (
        "lone surrogate in metadata",
        ".jsonl",
        GOOD + '\n{"id": "s", "text": "ok", "tag": ["\\udfff"]}',
        "'tag'",
    ),
]

# Unusual but valid: indexed, searchable, never an error.
VALID_ODDITIES = [
    {"id": "ctrl", "text": "制御\x00文字\x07入り\x1bのテキスト"},
    {"id": "punct", "text": "！？。、……――「」『』"},
    {"id": "emoji", "text": "🍣🗻 sushi and Fuji"},
    {"id": 12345, "text": "数値のid"},
    {"id": "rtl", "text": "مرحبا بالعالم"},
]


@pytest.fixture(scope="module")
def base_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("rel") / "idx"
    build_index(path, read_dicts(sample_rows()[:12]), progress=False).close()
    return path


def test_every_bad_file_is_a_clear_error_and_changes_nothing(base_index, tmp_path):
    before = tree_snapshot(base_index)
    tried = 0
    for name, suffix, content, must_name in JSONL_CASES:
        path = tmp_path / f"case{tried}{suffix}"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        for action in ("build", "add"):
            with pytest.raises(IngestError) as err:
                if action == "build":
                    build_index(base_index, read_file(path), progress=False)
                else:
                    update_index(base_index, read_file(path), progress=False)
            message = str(err.value)
            assert must_name in message, (name, action, message)
            assert name == "empty file" or path.name in message or "duplicate" in message, (name, message)
            tried += 1
    assert tree_snapshot(base_index) == before  # not one byte changed
    assert len(Index.open(base_index)) == 12
    assert tried == 2 * len(JSONL_CASES) >= 60


def test_an_unreadable_ids_file_is_one_line_naming_it(base_index, tmp_path, capsys):
    from tansaku.pipeline.cli import main

    before = tree_snapshot(base_index)
    absent = tmp_path / "stale.txt"
    assert main(["delete", str(base_index), "--ids-file", str(absent), "-q"]) == 2
    err = capsys.readouterr().err
    assert err == f"tansaku: error: {absent}: cannot read the --ids-file: No such file or directory\n"
    (tmp_path / "sjis.txt").write_bytes("東京".encode("cp932"))
    assert main(["delete", str(base_index), "--ids-file", str(tmp_path / "sjis.txt"), "-q"]) == 2
    assert "sjis.txt: cannot read the --ids-file" in capsys.readouterr().err
    assert tree_snapshot(base_index) == before


def test_valid_oddities_are_indexed(tmp_path):
    index = build_index(tmp_path / "odd", read_dicts(VALID_ODDITIES), progress=False)
    assert sorted(index.doc_ids) == sorted(str(r["id"]) for r in VALID_ODDITIES)
    from tansaku.retrieve import BM25Retriever

    hits = BM25Retriever(index).retrieve("制御文字", 5)
    assert hits[0].doc_id == "ctrl"  # text after the NUL was not lost
    assert BM25Retriever(index).retrieve("入り テキスト", 5)[0].doc_id == "ctrl"
    assert index.corpus.get("ctrl").text == VALID_ODDITIES[0]["text"]  # stored as given


def test_document_size_limit_is_configurable(tmp_path):
    rows = [{"id": "a", "text": "あ" * 2000}]
    with pytest.raises(IngestError, match="more than the limit of 1,000"):
        list(read_dicts(rows, FieldMap(max_chars=1000)))
    assert len(list(read_dicts(rows, FieldMap(max_chars=2000)))) == 1


def test_no_unsafe_deserialisation_in_the_code():
    """No pickle/joblib/marshal loading, torch.load only with weights_only=True, no allow_pickle."""
    sources = [
        p for d in ("index", "retrieve", "rerank", "pipeline", "scripts") for p in (REPO / d).rglob("*.py")
    ]
    assert len(sources) > 20
    offenders = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for pattern in (
            r"\bimport pickle\b",
            r"\bpickle\.load",
            r"\bjoblib\b",
            r"\bmarshal\.load",
            r"allow_pickle\s*=\s*True",
            r"\bdill\b",
            r"(?<![.\w])eval\(",
            r"yaml\.load\(",
        ):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(REPO)}: {pattern}")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
    assert offenders == []


def test_saved_arrays_load_without_pickle(base_index):
    import numpy as np

    for npy in base_index.rglob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises if any array needed pickle
    assert not list(base_index.rglob("*.pkl")) and not list(base_index.rglob("*.pickle"))


def test_shift_jis_csv_names_its_line_and_reads_with_encoding(tmp_path):
    rows = "id,text\n1,ascii only\n2,also ascii\n3,東京タワーは高い\n4,end\n"
    path = tmp_path / "excel.csv"
    path.write_bytes(rows.encode("cp932"))
    with pytest.raises(IngestError, match=r"excel.csv, line 4: not valid UTF-8.*--encoding cp932"):
        list(read_file(path))
    records = list(read_file(path, encoding="cp932"))
    assert [r.text for r in records][2] == "東京タワーは高い" and len(records) == 4
    with pytest.raises(IngestError, match="unknown encoding"):
        list(read_file(path, encoding="no-such-codec"))


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs to fill up (needs permission to mount: the test skips without it)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_keeps_the_index(small_disk):
    from tansaku.index import DiskFullError

    path = small_disk / "idx"
    build_index(path, read_dicts(sample_rows()), encoder="none", progress=False).close()
    before = tree_snapshot(path)
    text = "".join(r["text"] for r in sample_rows())  # ~9 KB of UTF-8 per document
    big = [{"id": f"big-{i}", "text": f"{i} {text}"} for i in range(600)]
    with pytest.raises(DiskFullError, match="no space left.*previous index is unchanged"):
        build_index(path, read_dicts(big), encoder="none", progress=False)
    with pytest.raises(DiskFullError, match="no space left"):
        update_index(path, read_dicts(big), progress=False)
    assert tree_snapshot(path) == before
    assert [p.name for p in small_disk.iterdir() if ".tmp-" in p.name] == []
