"""The server under hostile or careless clients: slow connections, long inference, huge
requests and foreign ``Host`` headers. Loopback only (127.0.0.1), a stub reranker, short
limits; timing is only ever checked against generous bounds (a timeout fired at all)."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

import tansaku
from helpers import sample_rows
from loopback import Served
from tansaku.index import ConfigError, TansakuError, build_index, read_dicts
from tansaku.index.hit import Hit
from tansaku.pipeline.cli.serve import add_serve, allowed_hosts, run_serve
from tansaku.pipeline.serve import ConnectionLimits, create_app
from tansaku.rerank.base import document_texts, ranked_hits

QUERY = "東京の人口"
SHORT = ConnectionLimits(header_timeout=1, body_timeout=1, keep_alive_timeout=1, max_connections=20)
SLACK = 5.0  # seconds allowed beyond a timeout for it to show (a busy 2-core machine)


class CountingReranker:
    """A stub reranker that counts the pairs it scores and can be held on a gate."""

    model_name = "stub"

    def __init__(self) -> None:
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls += 1
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return np.linspace(0.9, 0.1, len(pairs), dtype=np.float32)

    def rerank(self, query: str, docs: Sequence[Hit | str], top_n: int | None = None) -> list[Hit]:
        return ranked_hits(docs, self.score([(query, t) for t in document_texts(docs)]), top_n)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> Any:
    path = tmp_path_factory.mktemp("hardening") / "idx"
    build_index(path, read_dicts(sample_rows()), encoder="none", progress=False).close()
    return path


# -- slow and partial connections --------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (fails at ``deadline``)."""
    data = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(f"connection still open after the deadline; got {data[:80]!r}") from None
        if not chunk:
            return data
        data += chunk


def _one_response(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
            if k.lower() == b"content-length"
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_slow_and_partial_connections_are_closed_and_health_keeps_answering(servers):
    served: Served = servers.start(create_app(None, CountingReranker()), limits=SHORT)
    head = b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    slow: list[tuple[str, socket.socket]] = []
    try:
        # in this order: the last 20 opened (partial heads and slow bodies) fill every slot
        for _ in range(15):
            slow.append(("silent", _connect(served.port)))
        for _ in range(20):
            sock = _connect(served.port)
            sock.sendall(head)  # never ends its head
            slow.append(("head", sock))
        for _ in range(15):
            sock = _connect(served.port)
            sock.sendall(head + b"Content-Length: 1000\r\n\r\n" + b'{"query": "')  # never ends its body
            slow.append(("body", sock))
        # a kept-alive connection: one full request, then a second head that never ends
        kept = _connect(served.port)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _one_response(kept).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127")
        slow.append(("head", kept))
        opened = time.monotonic()

        # 51 slow clients against 20 connections: /health still answers, and at once
        res = httpx.get(served.url + "/health", timeout=SHORT.header_timeout + SLACK)
        assert res.status_code == 200 and res.json()["status"] == "ok"
        assert len(served.server.server_state.connections) <= SHORT.max_connections

        # and every slow connection is closed within its timeout (some earlier, to make room)
        deadline = opened + max(SHORT.header_timeout, SHORT.body_timeout) + SLACK
        answers = {kind: [] for kind in ("silent", "head", "body")}
        for kind, sock in slow:
            answers[kind].append(_until_closed(sock, deadline))
    finally:
        for _, sock in slow:
            sock.close()
    assert answers["silent"] == [b""] * 15  # nothing asked, nothing answered: just closed
    for data in answers["head"] + answers["body"]:
        # b"": closed to make room before its bytes were read (a reset loses the 503)
        assert data == b"" or data.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), data[:200]
        assert data == b"" or (b'"error"' in data and b"application/json" in data)
    # the survivors ran out of time: their 408s name the option
    assert b"--header-timeout" in answers["head"][-1]
    assert b"--body-timeout" in answers["body"][-1]
    assert any(b"--max-connections" in data for data in answers["head"])  # made room
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200


def test_a_body_cut_off_by_its_timeout_is_never_scored(servers):
    stub = CountingReranker()
    served = servers.start(create_app(None, stub), limits=SHORT)
    body = b'{"query": "q", "documents": ["a", "b"]}'
    with _connect(served.port) as sock:
        sock.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body) + 10) + body  # ten bytes never come
        )
        answer = _until_closed(sock, time.monotonic() + SHORT.body_timeout + SLACK)
    assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer
    ok = httpx.post(served.url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=10)
    assert ok.status_code == 200 and stub.calls == 1  # only the complete request was scored


def test_a_connection_beyond_the_limit_is_refused_only_when_all_are_being_answered(servers):
    stub = CountingReranker()
    stub.gate.clear()
    limits = ConnectionLimits(max_connections=2)
    served = servers.start(create_app(None, stub), limits=limits)
    body = {"query": QUERY, "documents": ["a", "b"]}
    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(httpx.post, served.url + "/v1/rerank", json=body, timeout=30) for _ in range(2)]
        deadline = time.monotonic() + 10
        while sum(c.waiting_since is None for c in served.server.server_state.connections) < 2:
            assert time.monotonic() < deadline, "the two requests never arrived"
            time.sleep(0.01)
        with _connect(served.port) as sock:  # sends nothing: the 503 comes unasked, then the close
            answer = _until_closed(sock, time.monotonic() + 10)
        stub.gate.set()
        assert [f.result().status_code for f in busy] == [200, 200]
    assert (
        answer.startswith(b"HTTP/1.1 503") and b"--max-connections" in answer and b"retry-after: 1" in answer
    )
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200


# -- inference time limit ----------------------------------------------------------------------------


def test_a_request_past_its_time_limit_gets_a_504_and_the_server_stays_healthy(servers):
    stub = CountingReranker()
    stub.gate.clear()
    served = servers.start(create_app(None, stub, request_timeout=0.5))
    body = {"query": QUERY, "documents": ["a", "b", "c"]}

    def post() -> httpx.Response:
        return httpx.post(served.url + "/v1/rerank", json=body, timeout=30)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post)
        assert stub.started.wait(10)
        second = pool.submit(post)  # waits behind the first for the one inference thread
        health = httpx.get(served.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["in_flight"] >= 1
        for res in (first.result(), second.result()):
            assert res.status_code == 504, res.text
            error = res.json()["error"]
            assert error["type"] == "timeout" and "--request-timeout" in error["message"]
            assert "0.5 s" in error["message"]
    stub.gate.set()
    deadline = time.monotonic() + 10
    while httpx.get(served.url + "/health", timeout=10).json()["in_flight"]:
        assert time.monotonic() < deadline, "the running work never ended"
        time.sleep(0.02)
    assert stub.calls == 1  # the second request timed out before it started: never run
    res = post()
    assert res.status_code == 200 and stub.calls == 2


# -- work per request --------------------------------------------------------------------------------


def test_work_per_request_is_capped_in_pairs_and_tokens_before_any_scoring(servers, index_path):
    stub = CountingReranker()
    searcher = tansaku.open(index_path, reranker=stub, mode="bm25")
    served = servers.start(create_app(searcher, stub, max_pairs=10, max_tokens=300))
    eleven = [f"文書{i}" for i in range(11)]
    long_docs = ["x" * 500, "y" * 500]  # ~167 estimated tokens each
    cases = [
        ("/v1/rerank", {"query": QUERY, "documents": eleven}, "documents", "--max-pairs"),
        ("/v2/rerank", {"query": QUERY, "documents": eleven}, "documents", "--max-pairs"),
        ("/rerank", {"query": QUERY, "documents": eleven}, "documents", "--max-pairs"),
        ("/rerank", {"query": QUERY, "texts": eleven}, "texts", "--max-pairs"),
        ("/v1/rerank", {"query": QUERY, "documents": long_docs}, "documents", "--max-tokens"),
        ("/rerank", {"query": QUERY, "texts": long_docs}, "texts", "--max-tokens"),
        ("/v1/rerank", {"query": "q" * 1000, "documents": ["a"]}, "query", "--max-tokens"),
        ("/v1/search", {"query": QUERY, "retrieve_k": 20, "rerank_k": 11}, "rerank_k", "--max-pairs"),
        ("/v1/search", {"query": QUERY, "retrieve_k": 10_000, "rerank_k": 10_000}, "rerank_k", "--max-pairs"),
        ("/v1/search", {"query": "東京" * 200, "rerank_k": 5}, "query", "--max-tokens"),
    ]
    for route, body, field, option in cases:
        res = httpx.post(served.url + route, json=body, timeout=30)
        assert res.status_code == 413, (route, field, res.text)
        error = res.json()["error"]
        assert error["field"] == field and option in error["message"], (route, error)
        assert ("10" if option == "--max-pairs" else "300") in error["message"]
    assert stub.calls == 0  # refused before any model work
    assert (
        httpx.post(
            served.url + "/v1/rerank", json={"query": QUERY, "documents": eleven[:10]}, timeout=60
        ).status_code
        == 200
    )
    res = httpx.post(
        served.url + "/v1/search", json={"query": "東京", "retrieve_k": 20, "rerank_k": 10}, timeout=60
    )
    assert res.status_code == 200 and stub.calls == 2


def test_default_work_limits_allow_top_100_reranking_and_refuse_abuse(servers):
    stub = CountingReranker()
    served = servers.start(create_app(None, stub))
    passage = "東京は日本の首都であり、人口はおよそ千四百万人です。" * 28  # ~700 characters, ~500 tokens
    res = httpx.post(
        served.url + "/v1/rerank", json={"query": QUERY, "documents": [passage] * 100}, timeout=30
    )
    assert res.status_code == 200 and stub.calls == 1
    # the request: thousands of documents in a body under the 10 MiB limit
    res = httpx.post(
        served.url + "/v1/rerank", json={"query": QUERY, "documents": ["短い文書"] * 5_000}, timeout=30
    )
    assert res.status_code == 413 and "(1000, --max-pairs)" in res.json()["error"]["message"]
    res = httpx.post(
        served.url + "/v1/rerank", json={"query": QUERY, "documents": [passage * 5] * 500}, timeout=30
    )
    assert res.status_code == 413 and "(500000, --max-tokens)" in res.json()["error"]["message"]
    assert stub.calls == 1


# -- Host header -------------------------------------------------------------------------------------


def test_only_ip_addresses_localhost_and_allowed_names_are_served(servers):
    default = servers.start(create_app(None, CountingReranker()))
    port = default.port

    def health(served: Served, host: str) -> httpx.Response:
        return httpx.get(served.url + "/health", headers={"Host": host}, timeout=10)

    for host in (
        "127.0.0.1",
        f"127.0.0.1:{port}",
        "localhost",
        f"localhost:{port}",
        f"[::1]:{port}",
        "[::1]",
    ):
        assert health(default, host).status_code == 200, host
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}"):
        res = health(default, host)
        assert res.status_code == 400, host
        error = res.json()["error"]
        assert error == {"message": error["message"], "type": "invalid_host", "field": "Host"}
        assert "--allowed-hosts" in error["message"] and host.split(":")[0] in error["message"]
    # the check comes before everything else, the API key and the routes included
    res = httpx.post(
        default.url + "/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={"Host": "evil.example"}
    )
    assert res.status_code == 400 and res.json()["error"]["type"] == "invalid_host"

    named = servers.start(
        create_app(None, CountingReranker(), allowed_hosts=["search.internal,*.corp.example"])
    )
    assert health(named, f"search.internal:{named.port}").status_code == 200
    assert health(named, "SEARCH.internal.").status_code == 200
    assert health(named, "a.b.corp.example").status_code == 200
    assert health(named, "corp.example").status_code == 400
    assert health(named, "localhost").status_code == 200
    anyone = servers.start(create_app(None, CountingReranker(), allowed_hosts=["*"]))
    assert health(anyone, "evil.example").status_code == 200


# -- command line ------------------------------------------------------------------------------------


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tansaku")
    add_serve(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_options_for_timeouts_connections_work_and_hosts(capsys):
    args = _serve_args("idx")
    assert (args.header_timeout, args.body_timeout, args.keep_alive_timeout, args.request_timeout) == (
        10,
        30,
        5,
        60,
    )
    assert (args.max_connections, args.max_pairs, args.max_tokens, args.allowed_hosts) == (
        256,
        1000,
        500_000,
        None,
    )
    for option in ("--header-timeout", "--body-timeout", "--keep-alive-timeout", "--request-timeout"):
        with pytest.raises(TansakuError, match=option):
            run_serve(_serve_args("idx", option, "0"))
    for option in ("--max-connections", "--max-pairs", "--max-tokens"):
        with pytest.raises(TansakuError, match=option):
            run_serve(_serve_args("idx", option, "0"))
    args = _serve_args("idx", "--allowed-hosts", "a.example,b.example", "--allowed-hosts", "c.example")
    assert allowed_hosts("127.0.0.1", args.allowed_hosts) == ["a.example,b.example", "c.example"]
    assert allowed_hosts("0.0.0.0", None) == [] and allowed_hosts("::", None) == []
    assert allowed_hosts("search.internal", None) == ["search.internal"]
    with pytest.raises(ConfigError, match="max_connections"):
        ConnectionLimits(max_connections=0)
    with pytest.raises(ConfigError, match="request_timeout"):
        create_app(None, CountingReranker(), request_timeout=0)
    with pytest.raises(SystemExit):
        _serve_args("--help")
    help_text = " ".join(capsys.readouterr().out.split())
    for text in (
        "--allowed-hosts",
        "--max-connections",
        "--max-pairs",
        "--max-tokens",
        "0.0.0.0",
        "DNS rebinding",
    ):
        assert text in help_text
