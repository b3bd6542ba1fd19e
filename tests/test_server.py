"""``tansaku serve`` over real HTTP: uvicorn in a thread, a tiny cross-encoder, a sample index.

Clients are httpx, the cohere SDK (v1 and v2) and LiteLLM (cohere and jina_ai providers), all
unchanged; expected scores come from the very reranker object the server uses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# LiteLLM otherwise downloads its model price list on import.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fixtures_models import JA_PARAGRAPHS  # noqa: E402
from helpers import RERANK_DOCS, RERANK_QUERY  # noqa: E402
from loopback import LoopbackServers, Served  # noqa: E402
from tansaku.index import ConfigError, TansakuError  # noqa: E402
from tansaku.pipeline.cli.serve import add_serve, run_serve  # noqa: E402
from tansaku.pipeline.serve import ApiError, InferenceQueue, RerankService, create_app  # noqa: E402
from tansaku.rerank import CrossEncoderReranker  # noqa: E402

MODEL = "tiny-reranker"
KEY = "test-key-123"
QUERY = RERANK_QUERY
DOCS = list(RERANK_DOCS)
LONG_DOC = "".join(JA_PARAGRAPHS)  # ~480 tokens: several 128-token windows
GUARD_MAX_DOCUMENTS = 5
GUARD_MAX_BODY = 4096


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[[Any], Served]]:
    """Start apps on free loopback ports; all are shut down at module end."""
    servers = LoopbackServers()
    yield servers.start
    servers.close()


@pytest.fixture(scope="module")
def server(searcher, reranker, serve) -> Served:
    """Index + reranker, no key, default limits, --strict-model-name (for the model 404s below;
    the default, any name accepted, is tested with the clients in test_clients.py)."""
    return serve(create_app(searcher, reranker, model_name=MODEL, strict_model_name=True))


@pytest.fixture(scope="module")
def guarded(serve, reranker) -> Served:
    """Rerank only, with an API key and small limits."""
    return serve(
        create_app(
            None,
            reranker,
            api_key=KEY,
            model_name=MODEL,
            max_documents=GUARD_MAX_DOCUMENTS,
            max_body_bytes=GUARD_MAX_BODY,
        )
    )


def post(served: Served, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(served.url + path, json=body, timeout=60, **kwargs)


def expected_ranking(
    reranker: CrossEncoderReranker, query: str, docs: list[str], top_n: int | None = None
) -> list[tuple[int, float]]:
    return [(int(h.doc_id), h.score) for h in reranker.rerank(query, docs, top_n=top_n)]


def assert_ranking(
    results: list[dict[str, Any]], expected: list[tuple[int, float]], score_key: str = "relevance_score"
) -> None:
    assert [r["index"] for r in results] == [i for i, _ in expected]
    np.testing.assert_allclose([r[score_key] for r in results], [s for _, s in expected], atol=1e-5)


def token_count(reranker: CrossEncoderReranker, query: str, docs: list[str]) -> int:
    tok = reranker._tokenizer
    ids = tok([query, *docs], add_special_tokens=False)["input_ids"]
    return sum(len(ids[0]) + len(d) + tok.num_special_tokens_to_add(pair=True) for d in ids[1:])


# -- Cohere-shaped rerank over httpx -------------------------------------------------------------


def test_cohere_v1_matches_reranker(server, reranker):
    res = post(server, "/v1/rerank", {"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": 3})
    assert res.status_code == 200, res.text
    body = res.json()
    assert_ranking(body["results"], expected_ranking(reranker, QUERY, DOCS, top_n=3))
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])  # no "document"
    assert all(0 <= r["relevance_score"] <= 1 for r in body["results"])
    assert body["meta"]["api_version"] == {"version": "1"}
    assert body["meta"]["billed_units"] == {"search_units": 1}
    tokens = token_count(reranker, QUERY, DOCS)
    assert body["usage"] == {"total_tokens": tokens, "prompt_tokens": tokens}
    assert body["model"] == MODEL and len(body["id"]) == 36


def test_v2_and_bare_paths_return_documents(server, reranker):
    docs = [{"text": d, "source": f"s{i}"} for i, d in enumerate(DOCS)]
    expected = expected_ranking(reranker, QUERY, DOCS)  # no top_n: every document
    for path, version in (("/v2/rerank", "2"), ("/rerank", "1")):
        res = post(server, path, {"query": QUERY, "documents": docs, "return_documents": True})
        assert res.status_code == 200, res.text
        body = res.json()
        assert_ranking(body["results"], expected)
        assert [r["document"] for r in body["results"]] == [docs[i] for i, _ in expected]
        assert body["meta"]["api_version"]["version"] == version


def test_rank_fields_join_name_value_lines(server, reranker):
    docs = [{"title": "東京", "text": DOCS[0], "id": 1}, {"text": DOCS[1], "title": "富士山"}]
    res = post(server, "/v1/rerank", {"query": QUERY, "documents": docs, "rank_fields": ["title", "text"]})
    assert res.status_code == 200, res.text
    joined = [f"title: {d['title']}\ntext: {d['text']}" for d in docs]
    assert_ranking(res.json()["results"], expected_ranking(reranker, QUERY, joined))


def test_raw_scores_are_logits_beside_the_sigmoid_score(server, reranker):
    res = post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS, "raw_scores": True})
    raw = reranker.compute_score([(QUERY, d) for d in DOCS])
    order = np.argsort(-np.asarray(raw), kind="stable")
    results = res.json()["results"]
    assert_ranking(results, [(int(i), raw[i]) for i in order], score_key="raw_score")
    # relevance_score stays a probability: strict clients validate it
    expected = reranker.compute_score([(QUERY, d) for d in DOCS], normalize=True)
    assert_ranking(results, [(int(i), expected[i]) for i in order])


def test_long_documents_truncated_and_windowed(server, reranker, tiny_bert_reranker_dir):
    docs = [LONG_DOC, DOCS[0], LONG_DOC[100:]]
    # max_tokens_per_doc: each document cut at the character where its N-th token ends
    tok = reranker._tokenizer
    cut = [
        d[: tok(d, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][39][1]]
        if len(tok(d, add_special_tokens=False)["input_ids"]) > 40
        else d
        for d in docs
    ]
    res = post(server, "/v2/rerank", {"query": QUERY, "documents": docs, "max_tokens_per_doc": 40})
    assert_ranking(res.json()["results"], expected_ranking(reranker, QUERY, cut))
    assert res.json()["usage"]["total_tokens"] == token_count(reranker, QUERY, cut)
    # max_chunks_per_doc: the same scores as a reranker built with that window limit
    one_window = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=128, max_chunks_per_doc=1)
    res = post(server, "/v1/rerank", {"query": QUERY, "documents": docs, "max_chunks_per_doc": 1})
    assert_ranking(res.json()["results"], expected_ranking(one_window, QUERY, docs))
    assert expected_ranking(one_window, QUERY, docs) != expected_ranking(reranker, QUERY, docs)
    # above the server's ceiling (8): capped, and said so
    res = post(server, "/v1/rerank", {"query": QUERY, "documents": docs, "max_chunks_per_doc": 50})
    assert_ranking(res.json()["results"], expected_ranking(reranker, QUERY, docs))
    assert "capped" in res.json()["meta"]["warnings"][0]


# -- TEI -------------------------------------------------------------------------------------------


def test_tei_body_gets_bare_sorted_array(server, reranker, tiny_bert_reranker_dir):
    res = post(server, "/rerank", {"query": QUERY, "texts": DOCS})
    assert res.status_code == 200, res.text
    assert_ranking(res.json(), expected_ranking(reranker, QUERY, DOCS), score_key="score")
    assert all(set(r) == {"index", "score"} for r in res.json())
    res = post(server, "/rerank", {"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": True})
    assert [r["text"] for r in res.json()] == [DOCS[r["index"]] for r in res.json()]
    raw = reranker.compute_score([(QUERY, DOCS[r["index"]]) for r in res.json()])
    np.testing.assert_allclose([r["score"] for r in res.json()], raw, atol=1e-5)
    # truncate: only the first window of a long text counts
    one_window = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=128, max_chunks_per_doc=1)
    texts = [LONG_DOC, LONG_DOC[200:], DOCS[0]]
    res = post(server, "/rerank", {"query": QUERY, "texts": texts, "truncate": True})
    assert_ranking(res.json(), expected_ranking(one_window, QUERY, texts), score_key="score")


# -- search, models, health ------------------------------------------------------------------------


def test_search_runs_the_pipeline(server, searcher):
    res = post(
        server,
        "/v1/search",
        {"query": "東京の電波塔", "top_n": 3, "retrieve_k": 20, "rerank_k": 10, "mode": "bm25"},
    )
    assert res.status_code == 200, res.text
    body = res.json()
    direct = searcher.search("東京の電波塔", top_n=3, retrieve_k=20, rerank_k=10, mode="bm25")
    assert [h["id"] for h in body["hits"]] == [h.doc_id for h in direct.hits]
    np.testing.assert_allclose([h["score"] for h in body["hits"]], [h.score for h in direct.hits], atol=1e-5)
    hit = body["hits"][0]
    assert set(hit) == {"id", "title", "text", "score", "rank", "stage", "metadata"}
    assert hit["stage"] == "rerank" and hit["rank"] == 1 and hit["title"] and hit["metadata"]["lang"]
    # particles are not terms: only documents sharing a content word or bigram are candidates
    retrieved = len(direct.candidates)
    assert 3 <= retrieved <= 20
    assert body["counts"] == {"retrieved": retrieved, "reranked": min(10, retrieved), "returned": 3}
    assert set(body["timings_ms"]) == {"retrieve", "fetch", "rerank", "total"}
    assert body["mode"] == "bm25" and body["model"] == MODEL
    # a smaller retrieve_k alone also shrinks the default rerank_k (20) with it
    res = post(server, "/v1/search", {"query": "東京の電波塔", "retrieve_k": 4})
    assert res.status_code == 200 and res.json()["counts"]["reranked"] == 4


def test_models_and_health(server, searcher):
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == MODEL and card["object"] == "model" and card["max_length"] == 128
    assert models["index"] == {"path": str(searcher.index.path), "documents": 56, "dense": False}
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["reranker"] == MODEL and health["documents"] == 56


class HeldReranker:
    """The real reranker, held on a gate before it scores: a rerank that lasts as long as
    the test needs, however fast or busy the machine."""

    def __init__(self, reranker: CrossEncoderReranker) -> None:
        self.inner = reranker
        self.model_name = reranker.model_name
        self.started = threading.Event()
        self.gate = threading.Event()

    def _hold(self) -> None:
        self.started.set()
        assert self.gate.wait(60), "the test never opened the gate"

    def score(self, pairs: Any) -> np.ndarray:
        self._hold()
        return self.inner.score(pairs)

    def rerank(self, query: str, docs: Any, top_n: int | None = None) -> Any:
        self._hold()
        return self.inner.rerank(query, docs, top_n=top_n)


def test_health_answers_while_a_slow_rerank_runs(searcher, reranker, serve):
    held = HeldReranker(reranker)
    server = serve(create_app(searcher, held, model_name=MODEL))
    slow = {"query": QUERY, "documents": [LONG_DOC[i:] for i in range(4)]}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, server, "/v1/rerank", slow)
        try:
            assert held.started.wait(30) and not pending.done(), "the rerank never started"
            # /health is answered beside inference, not queued behind it: every answer is
            # given while the rerank is held in flight (the server itself says so in each one).
            for _ in range(3):
                health = httpx.get(server.url + "/health", timeout=10)
                assert health.status_code == 200 and health.json()["in_flight"] == 1
            assert not pending.done()
        finally:
            held.gate.set()
        answer = pending.result()
    assert answer.status_code == 200
    assert_ranking(answer.json()["results"], expected_ranking(reranker, QUERY, slow["documents"]))


def test_inference_queue_bounds_waiting_requests():
    queue = InferenceQueue(threads=1, max_queue=1)
    gate = threading.Event()

    async def scenario() -> None:
        running = asyncio.ensure_future(queue.run(gate.wait, 10))
        waiting = asyncio.ensure_future(queue.run(str, "second"))
        await asyncio.sleep(0.05)
        assert queue.in_flight == 2
        with pytest.raises(ApiError) as busy:
            await queue.run(str, "third")
        assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}
        gate.set()
        assert await running is True and await waiting == "second"
        assert queue.in_flight == 0

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        queue.shutdown()


def test_max_tokens_cut_without_offsets(tiny_bert_japanese_reranker_dir):
    # BertJapaneseTokenizer (MeCab) is a slow tokenizer: the cut point is found by bisection
    service = RerankService(CrossEncoderReranker(tiny_bert_japanese_reranker_dir, max_length=128))
    tok = service.tokenizer
    assert not getattr(tok, "is_fast", False)
    (cut,), _ = service.truncate_and_count(QUERY, [LONG_DOC], 30)
    assert LONG_DOC.startswith(cut)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    assert count(cut) <= 30 < count(LONG_DOC[: len(cut) + 1])


# -- client libraries, unchanged -------------------------------------------------------------------


def test_cohere_sdk_v1_and_v2(server, reranker):
    import cohere

    since = len(server.paths)
    v1 = cohere.Client(api_key="unused", base_url=server.url)
    res = v1.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    expected = expected_ranking(reranker, QUERY, DOCS, top_n=2)
    assert_ranking([r.dict() for r in res.results], expected)
    assert res.results[0].document.text == DOCS[expected[0][0]]
    assert res.meta.api_version.version == "1" and res.meta.billed_units.search_units == 1
    v2 = cohere.ClientV2(api_key="unused", base_url=server.url)
    res = v2.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3, max_tokens_per_doc=512)
    assert [r.index for r in res.results] == [i for i, _ in expected_ranking(reranker, QUERY, DOCS, 3)]
    assert res.meta.api_version.version == "2"
    assert server.posted(since) == ["/v1/rerank", "/v2/rerank"]


def test_litellm_cohere_and_jina_providers(server, reranker):
    import litellm

    expected = expected_ranking(reranker, QUERY, DOCS, top_n=3)
    for provider in ("cohere", "jina_ai"):
        since = len(server.paths)
        res = litellm.rerank(
            model=f"{provider}/{MODEL}",
            query=QUERY,
            documents=DOCS,
            top_n=3,
            api_base=server.url,
            api_key="unused",
        )
        assert_ranking([dict(r) for r in res.results], expected)
        assert server.posted(since) == ["/v2/rerank" if provider == "cohere" else "/v1/rerank"]


# -- authentication --------------------------------------------------------------------------------


def test_api_key_required_except_health(guarded):
    body = {"query": QUERY, "documents": DOCS[:2]}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
    ):
        res = post(guarded, "/v1/rerank", body, headers=headers)
        assert res.status_code == 401 and res.json()["error"]["field"] == "Authorization"
    assert httpx.get(guarded.url + "/v1/models").status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200
    ok = post(guarded, "/v1/rerank", body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200, ok.text


def test_cohere_sdk_sees_401(guarded):
    import cohere
    from cohere.errors import UnauthorizedError

    with pytest.raises(UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=guarded.url).rerank(
            model=MODEL, query=QUERY, documents=DOCS
        )
    res = cohere.ClientV2(api_key=KEY, base_url=guarded.url).rerank(model=MODEL, query=QUERY, documents=DOCS)
    assert len(res.results) == len(DOCS)


# -- bad input: always 4xx, always naming the field -------------------------------------------------

Q = {"query": QUERY}
BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("/v1/rerank", {"documents": DOCS}, 422, "query"),
    ("/v1/rerank", {"query": "", "documents": DOCS}, 422, "query"),
    ("/v1/rerank", {"query": "  ", "documents": DOCS}, 422, "query"),
    ("/v1/rerank", {"query": 123, "documents": DOCS}, 422, "query"),
    ("/v1/rerank", Q, 422, "documents"),
    ("/v1/rerank", {**Q, "documents": []}, 422, "documents"),
    ("/v1/rerank", {**Q, "documents": "one document"}, 422, "documents"),
    ("/v1/rerank", {**Q, "documents": [{"title": "no text"}]}, 422, "documents[0].text"),
    ("/v1/rerank", {**Q, "documents": ["ok", {"text": None}]}, 422, "documents[1].text"),
    ("/v1/rerank", {**Q, "documents": ["ok", {"text": 5}]}, 422, "documents[1].text"),
    ("/v1/rerank", {**Q, "documents": ["ok", 5]}, 422, "documents[1]"),
    ("/v1/rerank", {**Q, "documents": [None]}, 422, "documents[0]"),
    ("/v1/rerank", {**Q, "documents": DOCS, "top_n": 0}, 422, "top_n"),
    ("/v1/rerank", {**Q, "documents": DOCS, "top_n": -3}, 422, "top_n"),
    ("/v1/rerank", {**Q, "documents": DOCS, "top_n": "2"}, 422, "top_n"),
    ("/v1/rerank", {**Q, "documents": DOCS, "top_n": 1.5}, 422, "top_n"),
    ("/v1/rerank", {**Q, "documents": DOCS, "top_n": True}, 422, "top_n"),
    ("/v1/rerank", {**Q, "documents": DOCS, "top_k": 2}, 422, "top_k"),
    ("/v1/rerank", {**Q, "documents": DOCS, "model": "rerank-v3.5"}, 404, "model"),
    ("/v1/rerank", {**Q, "documents": DOCS, "return_documents": "yes"}, 422, "return_documents"),
    ("/v1/rerank", {**Q, "documents": DOCS, "rank_fields": []}, 422, "rank_fields"),
    ("/v1/rerank", {**Q, "documents": [{"text": "t"}], "rank_fields": ["title"]}, 422, "documents[0]"),
    (
        "/v1/rerank",
        {**Q, "documents": [{"title": ["x"]}], "rank_fields": ["title"]},
        422,
        "documents[0].title",
    ),
    ("/v1/rerank", {**Q, "documents": DOCS, "max_chunks_per_doc": 0}, 422, "max_chunks_per_doc"),
    ("/v2/rerank", {**Q, "documents": DOCS, "max_tokens_per_doc": 0}, 422, "max_tokens_per_doc"),
    ("/v2/rerank", {**Q, "documents": DOCS, "relevant_spans": {"mode": "enabled"}}, 422, "relevant_spans"),
    ("/v2/rerank", {**Q, "documents": DOCS, "model": "nope"}, 404, "model"),
    ("/v2/rerank", {**Q, "documents": [{}]}, 422, "documents[0].text"),
    ("/rerank", {**Q, "documents": []}, 422, "documents"),
    ("/rerank", {**Q, "texts": []}, 422, "texts"),
    ("/rerank", {**Q, "texts": ["a", 1]}, 422, "texts[1]"),
    ("/rerank", {"texts": ["a"]}, 422, "query"),
    ("/rerank", {**Q, "texts": ["a"], "top_n": 0}, 422, "top_n"),
    ("/rerank", {**Q, "texts": ["a"], "truncation_direction": "Middle"}, 422, "truncation_direction"),
    ("/v1/search", {"query": ""}, 422, "query"),
    ("/v1/search", {}, 422, "query"),
    ("/v1/search", {**Q, "top_n": 0}, 422, "top_n"),
    ("/v1/search", {**Q, "mode": "fuzzy"}, 422, "mode"),
    ("/v1/search", {**Q, "mode": "dense"}, 422, "mode"),
    ("/v1/search", {**Q, "retrieve_k": 10, "rerank_k": 50}, 422, "rerank_k"),
    ("/v1/search", {**Q, "retrieve_k": 10**6}, 422, "retrieve_k"),
    ("/v1/search", {**Q, "k": 3}, 422, "k"),
    ("/v1/rerank", b'{"query": "q", "documents": [', 400, "body"),
    ("/v1/rerank", b"", 422, "body"),
    ("/v1/rerank", b"[" * 100_000, 400, "body"),  # too deep for the JSON parser
    ("/v1/rerank", [QUERY, DOCS], 422, "body"),
    ("/v2/rerank", "just a string", 422, "body"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    BAD_REQUESTS,
    ids=[f"{p}:{f}:{i}" for i, (p, _, _, f) in enumerate(BAD_REQUESTS)],
)
def test_bad_input_is_4xx_naming_the_field(server, path, body, status, field):
    if isinstance(body, bytes):
        res = httpx.post(
            server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30
        )
    else:
        res = post(server, path, body)
    assert res.status_code < 500
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert error["field"] == field and field in error["message"] + res.text
    assert error["message"] and error["type"]


def test_limits_documents_and_body_size(guarded):
    auth = {"Authorization": f"Bearer {KEY}"}
    many = {"query": QUERY, "documents": ["文書"] * (GUARD_MAX_DOCUMENTS + 1)}
    res = post(guarded, "/v1/rerank", many, headers=auth)
    assert res.status_code == 413 and res.json()["error"]["field"] == "documents"
    res = post(guarded, "/rerank", {"query": QUERY, "texts": ["文書"] * 6}, headers=auth)
    assert res.status_code == 413 and res.json()["error"]["field"] == "texts"
    big = {"query": QUERY, "documents": ["x" * 2000] * 3}  # > 4096 bytes, few documents
    res = post(guarded, "/v1/rerank", big, headers=auth)
    assert res.status_code == 413 and res.json()["error"]["field"] == "body"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is what counts
        yield b'{"query": "q", "documents": ["'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"]}'

    res = httpx.post(
        guarded.url + "/v1/rerank", content=chunks(), headers={**auth, "Content-Type": "application/json"}
    )
    assert res.status_code == 413 and res.json()["error"]["field"] == "body"
    # nothing loaded for search on a rerank-only server
    res = post(guarded, "/v1/search", {"query": QUERY}, headers=auth)
    assert res.status_code == 409 and "no index" in res.json()["error"]["message"]


def test_unknown_path_and_method_use_the_error_shape(server):
    res = httpx.get(server.url + "/v1/nothing")
    assert res.status_code == 404 and res.json()["error"]["type"] == "not_found"
    res = httpx.get(server.url + "/v1/rerank")
    assert res.status_code == 405 and "error" in res.json()


# -- app and command line --------------------------------------------------------------------------


def test_create_app_needs_something_to_serve(reranker):
    with pytest.raises(ConfigError, match="nothing to serve"):
        create_app(None, None)
    with pytest.raises(ConfigError, match="max_documents"):
        create_app(None, reranker, max_documents=0)


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tansaku")
    add_serve(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_cli_options_and_checks(capsys):
    args = _serve_args("idx")
    assert (args.host, args.port, args.reranker, args.max_documents) == ("127.0.0.1", 8080, "none", 10_000)
    assert args.max_body_bytes == 10 * 2**20 and args.workers_threads == 1
    with pytest.raises(TansakuError, match="--no-index"):
        run_serve(_serve_args())
    with pytest.raises(TansakuError, match="not both"):
        run_serve(_serve_args("idx", "--no-index"))
    with pytest.raises(TansakuError, match="needs --reranker"):
        run_serve(_serve_args("--no-index"))
    with pytest.raises(TansakuError, match="--max-documents"):
        run_serve(_serve_args("idx", "--max-documents", "0"))
    with pytest.raises(SystemExit):
        _serve_args("--help")
    help_text = capsys.readouterr().out
    for option in (
        "--reranker",
        "--host",
        "--port",
        "--api-key",
        "--max-documents",
        "--max-body-bytes",
        "--workers-threads",
        "--no-index",
        "curl",
        "TANSAKU_API_KEY",
    ):
        assert option in help_text
