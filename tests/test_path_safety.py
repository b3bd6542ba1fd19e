"""Nothing a user owns is replaced: path guards for every writer, one index per real path."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pytest

from helpers import sample_rows, tree_snapshot, write_jsonl
from tansaku.index import (
    BuildConfig,
    ConfigError,
    Index,
    IndexFormatError,
    build_index,
    create_field_index,
    open_index,
    read_dicts,
)
from tansaku.index.atomic import reading, swap_in, write_lock
from tansaku.index.encoders.e5_import import import_e5_small
from tansaku.index.locks import holding
from tansaku.index.update import update_index
from tansaku.pipeline.cli import main
from tansaku.rerank.training import train_cross_encoder


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def user_folder(root: Path) -> Path:
    """A folder of the user's: a data file and a subfolder with a note."""
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "docs.jsonl", sample_rows()[:4])
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me")
    return root


def test_build_in_a_data_folder_refuses_and_keeps_every_file(tmp_path, capsys, monkeypatch):
    folder = user_folder(tmp_path / "work")
    before = tree_snapshot(folder)
    monkeypatch.chdir(folder)
    code, _, err = cli(capsys, "build", ".", "docs.jsonl", "--encoder", "none", "-q")
    assert code == 2 and "refusing" in err and "docs.jsonl" in err
    code, _, err = cli(capsys, "build", folder, tmp_path / "other.jsonl", "--encoder", "none", "-q")
    assert code == 2 and "not a tansaku index" in err
    assert tree_snapshot(folder) == before
    # The Python API refuses too, before reading any record.
    with pytest.raises(ConfigError, match="not a tansaku index"):
        build_index(folder, read_dicts(sample_rows()[:3]), progress=False)
    assert tree_snapshot(folder) == before


def test_build_over_a_data_file_refuses_and_suggests_swapped_arguments(tmp_path, capsys):
    data = write_jsonl(tmp_path / "copy.jsonl", sample_rows()[:3])
    new = write_jsonl(tmp_path / "new.jsonl", sample_rows()[3:6])
    before = data.read_bytes()
    code, _, err = cli(capsys, "build", data, new, "--encoder", "none", "-q")
    assert code == 2 and "is a file" in err and "swap" in err
    assert data.is_file() and data.read_bytes() == before
    # Searching or updating "an index" that is the data file says so, and never suggests
    # building over it.
    for argv in (("search", data, "東京"), ("add", data, new)):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and "is a file" in err and "swap" in err
        assert "tansaku build" not in err
    assert data.read_bytes() == before


def test_build_refuses_an_input_inside_the_index(tmp_path, capsys):
    index = tmp_path / "idx"
    build_index(index, read_dicts(sample_rows()[:3]), progress=False).close()
    inside = write_jsonl(index / "extra.jsonl", sample_rows()[3:5])
    code, _, err = cli(capsys, "build", index, inside, "--encoder", "none", "-q")
    assert code == 2 and "inside it" in err
    assert inside.is_file() and len(Index.open(index)) == 3


def test_new_path_empty_folder_and_existing_index_are_built(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "new" / "idx", empty):
        assert len(build_index(path, read_dicts(sample_rows()[:3]), progress=False)) == 3
    # An existing index is replaced (the normal rebuild), as is a damaged one (manifest gone
    # bad, but nothing in the folder but index files).
    assert len(build_index(empty, read_dicts(sample_rows()[:5]), progress=False)) == 5
    (empty / "manifest.json").write_text("{not json")
    assert len(build_index(empty, read_dicts(sample_rows()[:2]), progress=False)) == 2


def test_update_through_a_symlink_updates_the_real_index(tmp_path):
    real = tmp_path / "idx"
    build_index(real, read_dicts(sample_rows()[:5]), progress=False).close()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    update_index(link, read_dicts(sample_rows()[5:7]), progress=False)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(Index.open(real)) == 7 and len(Index.open(link)) == 7
    update_index(real, delete=[sample_rows()[0]["id"]], progress=False)
    assert len(Index.open(link)) == 6
    # A rebuild through the link also lands in the real directory.
    build_index(link, read_dicts(sample_rows()[:2]), progress=False).close()
    assert link.is_symlink() and len(Index.open(real)) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["idx", "link"]


def test_one_lock_whatever_the_spelling(tmp_path):
    real = tmp_path / "idx"
    build_index(real, read_dicts(sample_rows()[:5]), progress=False).close()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    dotted = tmp_path / "sub" / ".." / "idx"
    (tmp_path / "sub").mkdir()
    for held, writer in ((real, link), (link, real), (dotted, link)):
        with write_lock(held):
            with pytest.raises(IndexFormatError, match="being written"):
                update_index(writer, read_dicts(sample_rows()[5:6]), progress=False)
            with pytest.raises(IndexFormatError, match="being written"):
                build_index(writer, read_dicts(sample_rows()[:2]), progress=False)
    assert len(Index.open(real)) == 5 and link.is_symlink()


def test_no_lock_files_are_left_beside_the_index(tmp_path, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    docs = write_jsonl(folder / "docs.jsonl", sample_rows()[:8])
    index, sharded, link = folder / "idx", folder / "sharded", folder / "link"
    assert cli(capsys, "build", index, docs, "--encoder", "none", "-q")[0] == 0
    build_index(sharded, read_dicts(sample_rows()[:8]), BuildConfig(shard_docs=3), progress=False).close()
    link.symlink_to(index, target_is_directory=True)
    for path in (index, sharded, link):
        assert cli(capsys, "search", path, "東京", "--json")[0] == 0
        open_index(path).close()
    more = write_jsonl(tmp_path / "more.jsonl", sample_rows()[8:10])
    assert cli(capsys, "add", link, more, "-q")[0] == 0
    assert cli(capsys, "delete", sharded, "--ids", sample_rows()[0]["id"], "-q")[0] == 0
    create_field_index(index, "category")
    assert sorted(p.name for p in folder.iterdir()) == ["docs.jsonl", "idx", "link", "sharded"]
    # a crashed holder's file (no process holds it) goes with the next use
    (folder / ".idx.lock").write_text("pid 999999999")
    (folder / ".idx.swap-lock").touch()
    update_index(index, read_dicts(sample_rows()[10:11]), progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["docs.jsonl", "idx", "link", "sharded"]


def test_transient_lock_files_still_exclude(tmp_path):
    """Readers share, writers exclude, and a lock file deleted by its last holder while
    others waited on it never lets two conflicting holders in at once."""
    lock = tmp_path / ".x.swap-lock"
    inside = {"readers": 0, "writers": 0}
    guard = threading.Lock()
    errors: list[str] = []

    def hold(operation: int, rounds: int) -> None:
        kind = "writers" if operation == fcntl.LOCK_EX else "readers"
        for _ in range(rounds):
            with holding(lock, operation):
                with guard:
                    inside[kind] += 1
                    if inside["writers"] > 1 or (inside["writers"] and inside["readers"]):
                        errors.append(f"{inside}")
                time.sleep(0.0005)
                with guard:
                    inside[kind] -= 1

    threads = [threading.Thread(target=hold, args=(fcntl.LOCK_SH, 150)) for _ in range(4)]
    threads += [threading.Thread(target=hold, args=(fcntl.LOCK_EX, 100)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and not lock.exists()
    # the index locks: a writer still refuses a second one, a swap waits for a reader
    index = tmp_path / "idx"
    build_index(index, read_dicts(sample_rows()[:3]), progress=False).close()
    with write_lock(index):
        assert (tmp_path / ".idx.lock").read_text() == f"pid {os.getpid()}"
        with pytest.raises(IndexFormatError, match=f"being written by pid {os.getpid()}"):
            with write_lock(tmp_path / "idx"):
                pass
    swapped = threading.Event()
    with reading(index):
        staged = tmp_path / "staged"
        staged.mkdir()
        swapper = threading.Thread(target=lambda: (swap_in(staged, index), swapped.set()))
        swapper.start()
        assert not swapped.wait(0.5)  # the swap waits for the reader
    swapper.join()
    assert swapped.is_set() and sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_model_and_run_outputs_refuse_user_files(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text("mine")
    folder = user_folder(tmp_path / "folder")
    before = tree_snapshot(folder)
    for out in (data, folder):
        with pytest.raises(ConfigError, match="refusing|already exists"):
            import_e5_small(out, overwrite=True)
        with pytest.raises(ConfigError, match="refusing|not empty"):
            train_cross_encoder("no-such-base", [], out, overwrite=True)
    # eval --out: only a folder of earlier run files may be written into.
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "text": "東京"}])
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 ja-003 1\n")
    index = tmp_path / "idx"
    build_index(index, read_dicts(sample_rows()[:5]), progress=False).close()
    for out in (data, folder):
        code, _, err = cli(capsys, "eval", index, "--queries", queries, "--qrels", qrels, "--out", out, "-q")
        assert code == 2 and "refusing" in err
    assert data.read_text() == "mine" and tree_snapshot(folder) == before
    runs = tmp_path / "runs"
    for _ in range(2):  # a second evaluation replaces the first one's run files
        code, out, _ = cli(
            capsys, "eval", index, "--queries", queries, "--qrels", qrels, "--out", runs, "-q", "--json"
        )
        assert code == 0 and json.loads(out)["stages"][0]["run_file"].endswith(".run")
    assert [p.suffix for p in runs.iterdir()] == [".run"]


def test_a_manifest_cannot_point_the_encoder_outside_its_index(tmp_path):
    from tansaku.index import open_index
    from tansaku.index.encoders.loading import encoder_from_config

    index = tmp_path / "idx"
    index.mkdir()
    (tmp_path / "elsewhere").mkdir()
    for config in (
        {"type": "corpus", "path": "../elsewhere", "dim": 8},
        {"type": "sentence-transformers", "model": "../elsewhere", "bundled": True, "dim": 8},
    ):
        with pytest.raises(IndexFormatError, match="outside the index"):
            encoder_from_config(config, base=index)
    # and through a real index whose manifest was edited
    build_index(index, read_dicts(sample_rows()[:5]), encoder="corpus", progress=False).close()
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["dense"]["encoder"]["path"] = "../elsewhere"
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="outside the index"):
        _ = open_index(index).encoder
