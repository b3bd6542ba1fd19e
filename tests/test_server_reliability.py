"""The server under updates and hostile input: readers never fail, client paths are never read."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

import tansaku
from helpers import sample_rows
from tansaku.index import build_index, read_dicts
from tansaku.index.update import update_index
from tansaku.pipeline.serve import create_app
from tansaku.rerank import CrossEncoderReranker


def test_search_requests_keep_working_during_updates(tmp_path, servers):
    rows = sample_rows()
    path = tmp_path / "live"
    build_index(path, read_dicts(rows[:30]), encoder="none", progress=False).close()
    versions = {frozenset(r["id"] for r in rows[:n]) for n in range(30, 57, 2)}
    searcher = tansaku.open(path, mode="bm25", top_n=56, retrieve_k=56)
    served = servers.start(create_app(searcher, None))
    errors: list[str] = []
    seen: list[frozenset[str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            while not stop.is_set():
                res = http.post("/v1/search", json={"query": "の", "top_n": 56, "retrieve_k": 56})
                if res.status_code != 200:
                    errors.append(f"{res.status_code}: {res.text}")
                    continue
                ids = frozenset(h["id"] for h in res.json()["hits"])
                # each answer comes from one version: every id from it, none deleted or unknown
                if not any(ids <= v for v in versions):
                    errors.append(f"ids from no single version: {sorted(ids)}")
                seen.append(ids)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(30, 56, 2):
            update_index(path, read_dicts(rows[i : i + 2]), progress=False)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert len(seen) >= 3
    last = httpx.post(served.url + "/v1/search", json={"query": "Mount Fuji", "top_n": 56}).json()
    assert "en-001" in {h["id"] for h in last["hits"]}  # the server sees the last update


class _OpenRecorder:
    """Every path the process opens while recording (an audit hook: nothing is patched)."""

    def __init__(self) -> None:
        self.recording = False
        self.opened: list[str] = []
        sys.addaudithook(self._hook)  # hooks cannot be removed; it is inert when not recording

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.recording and event in {"open", "os.listdir", "os.scandir"} and args:
            target = args[0]
            if isinstance(target, (str, bytes, os.PathLike)):
                self.opened.append(os.fsdecode(target))


def test_client_supplied_paths_are_never_read(tmp_path, servers, tiny_bert_reranker_dir):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me", encoding="utf-8")
    other_model = Path(tiny_bert_reranker_dir)
    build_index(tmp_path / "idx", read_dicts(sample_rows()[:10]), encoder="none", progress=False)
    searcher = tansaku.open(tmp_path / "idx", mode="bm25")
    reranker = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=64)
    # strict: a model "name" that is a path must get its 404 (by default it is just ignored)
    served = servers.start(create_app(searcher, reranker, model_name="served-model", strict_model_name=True))
    client_paths = [
        str(secret),
        str(other_model),
        str(tmp_path / "idx"),
        "../../etc/passwd",
        f"file://{secret}",
    ]
    bodies: list[tuple[str, dict[str, Any]]] = []
    for p in client_paths:
        bodies += [
            ("/v1/rerank", {"model": p, "query": "q", "documents": ["a"]}),
            ("/v1/rerank", {"query": p, "documents": [p, {"text": p, "path": p}]}),
            ("/v2/rerank", {"model": p, "query": "q", "documents": ["a"]}),
            ("/rerank", {"query": "q", "texts": [p]}),
            ("/v1/search", {"query": p}),
            ("/v1/search", {"query": "q", "index": p}),
            ("/v1/search", {"query": "q", "reranker": p}),
        ]
    recorder = _OpenRecorder()
    recorder.recording = True
    try:
        statuses = [httpx.post(served.url + url, json=body, timeout=60).status_code for url, body in bodies]
    finally:
        recorder.recording = False
    assert all(s < 500 for s in statuses), statuses
    assert 404 in statuses and 422 in statuses and 200 in statuses  # model, unknown field, served
    touched = [
        p
        for p in recorder.opened
        if any(p.startswith(c.removeprefix("file://")) for c in client_paths) or "etc/passwd" in p
    ]
    assert not touched, touched
    recorder.recording = True  # the control: the hook does see an open of that file
    try:
        secret.read_text(encoding="utf-8")
    finally:
        recorder.recording = False
    assert str(secret) in recorder.opened


def _dictionary_mappings() -> int:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.rstrip().endswith("sys.dic"))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_updates_and_reopens_do_not_pile_up_mecab_dictionaries(tmp_path):
    # fugashi never unmaps a Tagger's dictionary; a server reopening its index after every
    # update used to map unidic's sys.dic once more each time (RSS grew ~12 MB per update).
    rows = sample_rows()
    path = tmp_path / "idx"
    build_index(path, read_dicts(rows), encoder="none", progress=False).close()
    searcher = tansaku.open(path, mode="bm25")
    searcher.search("東京")
    before = _dictionary_mappings()
    for i in range(6):
        if i % 2:
            update_index(path, read_dicts(rows[-4:]), progress=False)
        else:
            update_index(path, (), [r["id"] for r in rows[-4:]], progress=False)
        assert searcher.search("東京の人口").hits
    assert _dictionary_mappings() - before <= 0


def test_health_and_models_report_the_current_version_after_an_update(tmp_path, servers):
    rows = sample_rows()
    path = tmp_path / "idx"
    build_index(path, read_dicts(rows[:20]), encoder="none", progress=False).close()
    served = servers.start(create_app(tansaku.open(path, mode="bm25"), None))
    assert httpx.get(served.url + "/health").json()["documents"] == 20
    update_index(path, read_dicts(rows[20:25]), progress=False)
    # no search in between: the info routes themselves see the new version
    assert httpx.get(served.url + "/health").json()["documents"] == 25
    update_index(path, delete=[rows[0]["id"]], progress=False)
    assert httpx.get(served.url + "/v1/models").json()["index"]["documents"] == 24


def test_bad_unicode_and_huge_filters_are_4xx_naming_the_field(tmp_path, servers, reranker):
    path = tmp_path / "idx"
    build_index(path, read_dicts(sample_rows()), encoder="none", progress=False).close()
    served = servers.start(create_app(tansaku.open(path, mode="bm25"), reranker))
    bad = "\ud800"  # a lone surrogate: valid JSON ("\\ud800"), not valid Unicode

    def post(route: str, body: dict[str, Any]) -> httpx.Response:
        # json.dumps escapes the surrogate as \\ud800, as a client's JSON encoder would
        import json

        return httpx.post(
            served.url + route, content=json.dumps(body), headers={"content-type": "application/json"}
        )

    cases = [
        ("/v1/search", {"query": "東京", "filter": {"lang": bad}}, "filter.lang"),
        ("/v1/search", {"query": "東京", "filter": {"$or": [{"year": i} for i in range(1000)]}}, "filter"),
        (
            "/v1/rerank",
            {"query": "東京", "documents": ["ok", f"x{bad}"], "return_documents": True},
            "documents[1]",
        ),
        ("/rerank", {"query": "東京", "texts": ["ok", bad], "return_text": True}, "texts[1]"),
        ("/v1/search", {"query": f"東京{bad}"}, "query"),
    ]
    for route, body, field in cases:
        res = post(route, body)
        assert res.status_code == 422, (route, res.status_code, res.text)
        assert res.json()["error"]["field"] == field, res.text
    assert post("/v1/search", {"query": "東京", "filter": {"lang": "ja"}}).status_code == 200
