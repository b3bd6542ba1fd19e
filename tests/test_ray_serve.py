"""`tansaku serve --ray`: the Ray Serve app answers exactly as the in-process server does.

One local cluster (the session's ``ray_cluster``); the same sharded index and tiny reranker are
served in-process (uvicorn on 127.0.0.1) and through Ray Serve (ingress + 2 shard deployments +
a batched reranker deployment), and every answer is compared field by field.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from helpers import sample_rows
from tansaku.index import BuildConfig, build_index, read_dicts
from tansaku.index.update import update_index
from tansaku.pipeline.api import open_index
from tansaku.pipeline.serve import create_app
from tansaku.rerank import CrossEncoderReranker

pytestmark = pytest.mark.slow

ROWS = sample_rows()
VOLATILE = {"id", "timings_ms", "meta"}  # request ids and clock readings differ by nature


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stable(body: object) -> object:
    # only top-level request ids and timings: hit ids must match
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k not in VOLATILE}
    return body


@pytest.fixture(scope="module")
def served(ray_cluster, servers, tmp_path_factory, tiny_bi_encoder_dir, tiny_bert_reranker_dir):
    from ray import serve

    from tansaku.pipeline.cluster.serve_app import APP_NAME, RayServeConfig, run

    path = tmp_path_factory.mktemp("ray-serve") / "idx"
    config = BuildConfig(analyzer="ja", encoder=str(tiny_bi_encoder_dir), shards=3)
    build_index(path, read_dicts(ROWS[:-4]), config, progress=False).close()

    reranker = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=128)
    local = servers.start(create_app(open_index(path, reranker=reranker), reranker, api_key="k", max_queue=8))

    port = _free_port()
    run(
        path,
        str(tiny_bert_reranker_dir),
        port=port,
        config=RayServeConfig(
            shards_per_group=2,
            reranker_options={"max_length": 128},
            # the same torch threads as this process: float sums in the same order, same bits
            reranker_torch_threads=torch.get_num_threads(),
            max_batch_size=4,
            reranker_max_queued=2,  # the replica sheds load before the ingress does
            batch_wait_timeout_s=0.2,  # requests stay in flight while a batch fills
        ),
        app_options={"api_key": "k", "max_queue": 8, "worker_threads": 32},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the Ray Serve app did not start"
        time.sleep(0.5)
    yield {"local": local.url, "ray": url, "path": path, "port": port, "reranker": tiny_bert_reranker_dir}
    serve.delete(APP_NAME)


def _both(served, route: str, body: dict, key: str = "k") -> tuple[httpx.Response, httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    headers["Content-Type"] = "application/json"
    content = json.dumps(body)  # ASCII escapes: a lone surrogate travels as "\\ud800"
    a = httpx.post(served["local"] + route, content=content, headers=headers, timeout=120)
    b = httpx.post(served["ray"] + route, content=content, headers=headers, timeout=120)
    return a, b


SEARCHES = [
    {"query": "東京タワー", "top_n": 5, "mode": "bm25"},
    {"query": "富士山の高さ", "top_n": 5, "mode": "dense"},
    {"query": "日本の料理", "top_n": 8, "mode": "hybrid"},
    {"query": "検索エンジンの仕組み", "top_n": 5, "mode": "hybrid", "filter": {"lang": "ja"}},
    {"query": "Mount Fuji", "top_n": 3, "mode": "bm25", "filter": {"year": {"$gte": 2000}}},
    {"query": "日本の料理", "top_n": 4, "rerank_k": 10, "mode": "bm25"},
]


@pytest.mark.parametrize("body", SEARCHES, ids=lambda b: f"{b['mode']}-{b['query']}")
def test_search_through_ray_equals_in_process(served, body):
    a, b = _both(served, "/v1/search", body)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["hits"], "the comparison needs hits"
    assert _stable(b.json()) == _stable(a.json())


def test_a_filter_on_an_unknown_field_warns_alike(served):
    a, b = _both(served, "/v1/search", {"query": "東京", "mode": "bm25", "filter": {"yaer": 2000}})
    assert a.status_code == b.status_code == 200
    assert b.json()["warnings"] and _stable(b.json()) == _stable(a.json())


RERANKS = [
    ("/v1/rerank", {"query": "富士山", "documents": [r["text"] for r in ROWS[:6]], "return_documents": True}),
    ("/v2/rerank", {"query": "東京", "documents": [r["text"] for r in ROWS[6:12]], "top_n": 3}),
    ("/rerank", {"query": "東京", "texts": [r["text"] for r in ROWS[:4]], "raw_scores": True}),
    (
        "/rerank",
        {
            "query": "東京",
            "texts": ["".join(r["text"] for r in ROWS[i : i + 8]) for i in (0, 8, 16)],
            "truncate": True,
            "truncation_direction": "Left",
        },
    ),
]


@pytest.mark.parametrize(("route", "body"), RERANKS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(RERANKS)])
def test_rerank_through_ray_equals_in_process(served, route, body):
    a, b = _both(served, route, body)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert _stable(b.json()) == _stable(a.json())


BAD = [
    ("/v1/search", {"query": "東京", "top_n": 0}),
    ("/v1/search", {"query": "東京", "filter": {"year": {"$regex": "x"}}}),
    ("/v1/rerank", {"query": "東京", "documents": "not a list"}),
    ("/v2/rerank", {"query": "\ud800", "documents": ["a"]}),
]


@pytest.mark.parametrize(("route", "body"), BAD, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD)])
def test_bad_input_gets_the_same_4xx(served, route, body):
    a, b = _both(served, route, body)
    assert 400 <= a.status_code < 500
    assert (b.status_code, b.json()) == (a.status_code, a.json())


def test_a_full_reranker_queue_is_a_503_with_retry_after(served):
    """Past its replicas' queue the reranker deployment sheds load; the ingress turns that into
    the 503 + Retry-After the single-process server answers (driven through the ingress's own
    RemoteReranker, so the requests really overlap: over HTTP each first waits for its token
    count at the ingress)."""
    from ray import serve

    from tansaku.pipeline.cluster.reranker_server import RemoteReranker
    from tansaku.pipeline.serve.errors import ApiError

    remote = RemoteReranker(serve.get_deployment_handle("reranker", app_name="tansaku"))
    pairs = [("東京", r["text"]) for r in ROWS] * 40

    def score(_: int) -> int | ApiError:
        try:
            return len(remote.score(pairs))
        except ApiError as exc:
            return exc

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(score, range(24)))
    busy = [a for a in answers if isinstance(a, ApiError)]
    assert busy, answers
    assert all(a == len(pairs) for a in answers if not isinstance(a, ApiError))
    assert busy[0].status == 503 and busy[0].headers == {"Retry-After": "1"}
    assert "reranker busy" in str(busy[0])


def test_api_key_is_enforced_at_the_ingress(served):
    _, b = _both(served, "/v1/search", {"query": "東京"}, key="wrong")
    assert b.status_code == 401


def test_an_update_is_seen_by_the_next_search(served):
    new = ROWS[-4:]
    body = {"query": new[0]["title"], "top_n": 3, "mode": "bm25"}
    _, before = _both(served, "/v1/search", body)
    assert new[0]["id"] not in [h["id"] for h in before.json()["hits"]]
    update_index(Path(served["path"]), add=read_dicts(new), progress=False)
    a, b = _both(served, "/v1/search", body)
    assert b.status_code == 200, b.text
    assert new[0]["id"] in [h["id"] for h in b.json()["hits"]]
    assert _stable(b.json()) == _stable(a.json())


def test_the_cli_deploys_the_same_app(served):
    """``tansaku serve INDEX --ray`` (joining this cluster) redeploys the app; it answers alike."""
    from ray import serve

    from tansaku.pipeline.cli import main

    serve.delete("tansaku")
    args = ["serve", str(served["path"]), "--ray", "--port", str(served["port"]), "--api-key", "k"]
    args += ["--reranker", str(served["reranker"]), "--max-length", "128", "--max-queue", "8"]
    args += ["--torch-threads", str(torch.get_num_threads())]
    threading.Thread(target=main, args=(args,), daemon=True).start()  # serves until the session ends
    deadline = time.monotonic() + 120
    body = {"query": "日本の料理", "top_n": 5, "mode": "hybrid"}
    while True:
        try:
            a, b = _both(served, "/v1/search", body)
            if b.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the CLI's app did not start"
        time.sleep(0.5)
    assert _stable(b.json()) == _stable(a.json())


def test_without_ray_the_flag_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from tansaku.pipeline.cli import main\n"
        f"sys.exit(main(['serve', {str(tmp_path)!r}, '--ray']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'tansaku[ray]'" in done.stderr
    assert "Traceback" not in done.stderr
