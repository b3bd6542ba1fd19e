"""Third-party rerank clients, unchanged, against a real ``tansaku serve`` on 127.0.0.1.

Each client is pointed at the server the way its documentation says to point it at a TEI,
Infinity or Cohere server: AnswerDotAI ``rerankers`` (TEI provider), LiteLLM (``huggingface/``
and ``infinity/``), Haystack's ``HuggingFaceTEIRanker`` (with left truncation), Open WebUI's
external reranker request, LlamaIndex's and LangChain's Cohere rerankers. Every expected order
and score is the very reranker object the server uses. The fast tier also covers what these
clients send (TEI bodies with extra fields, foreign model names) with plain httpx, the offline
API docs and the Prometheus metrics.
"""

from __future__ import annotations

import os
import re
from typing import Any

# LiteLLM otherwise downloads its model price list on import; Haystack would send telemetry.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from fixtures_models import JA_PARAGRAPHS  # noqa: E402
from helpers import RERANK_DOCS, RERANK_QUERY  # noqa: E402
from loopback import Served  # noqa: E402
from tansaku.pipeline.serve import create_app  # noqa: E402
from tansaku.rerank import CrossEncoderReranker  # noqa: E402

MODEL = "tiny-reranker"
KEY = "clients-key"
QUERY = RERANK_QUERY
DOCS = list(RERANK_DOCS)
LONG_DOC = "".join(JA_PARAGRAPHS)  # ~480 tokens: several 128-token windows
# what each client sends as "model" when told nothing else
CLIENT_DEFAULT_MODELS = [
    "reranker",  # Open WebUI
    "rerank-english-v3.0",  # LlamaIndex's CohereRerank, rerankers' cohere provider
    "jina-reranker-v1-base-en",  # rerankers' jina provider
    "BAAI/bge-reranker-base",  # rerankers' TEI provider
]


@pytest.fixture(scope="module")
def server(servers, searcher, reranker) -> Served:
    """Index + reranker, defaults: any model name is accepted."""
    return servers.start(create_app(searcher, reranker, model_name=MODEL))


@pytest.fixture(scope="module")
def strict(servers, reranker) -> Served:
    """Rerank only, with --strict-model-name."""
    return servers.start(create_app(None, reranker, model_name=MODEL, strict_model_name=True))


@pytest.fixture(scope="module")
def guarded(servers, reranker) -> Served:
    """Rerank only, with an API key."""
    return servers.start(create_app(None, reranker, model_name=MODEL, api_key=KEY))


def post(served: Served, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(served.url + path, json=body, timeout=60, **kwargs)


def expected(reranker: Any, texts: list[str], top_n: int | None = None) -> list[tuple[int, float]]:
    """(request index, score) best first, from the reranker object itself."""
    return [(int(h.doc_id), h.score) for h in reranker.rerank(QUERY, texts, top_n=top_n)]


def assert_ranked(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def one_window(reranker_dir: Any, side: str) -> CrossEncoderReranker:
    """What TEI's ``truncate`` means: one window per text, from its start or its end."""
    return CrossEncoderReranker(reranker_dir, max_length=128, max_chunks_per_doc=1, truncation_side=side)


# -- TEI bodies as real clients send them (fast) ---------------------------------------------------


def test_tei_body_extra_fields_ignored_and_top_n_honoured(server, reranker):
    # AnswerDotAI rerankers' TEI provider sends exactly this (model, top_n, return_text)
    body = {"model": "BAAI/bge-reranker-base", "query": QUERY, "texts": DOCS, "top_n": 2, "return_text": True}
    res = post(server, "/rerank", {**body, "some_future_field": {"x": 1}})
    assert res.status_code == 200, res.text
    want = expected(reranker, DOCS, top_n=2)
    assert_ranked([(r["index"], r["score"]) for r in res.json()], want)
    assert [r["text"] for r in res.json()] == [DOCS[i] for i, _ in want]
    # LiteLLM's huggingface/ provider: raw_scores and truncation_direction always, top_n
    res = post(server, "/rerank", {"query": QUERY, "texts": DOCS, "top_n": 3, "raw_scores": False})
    assert_ranked([(r["index"], r["score"]) for r in res.json()], expected(reranker, DOCS, top_n=3))
    # what TEI would reject is still rejected, naming the field
    for bad, field in (
        ({"top_n": 0}, "top_n"),
        ({"top_n": "2"}, "top_n"),
        ({"truncation_direction": "Middle"}, "truncation_direction"),
        ({"raw_scores": "yes"}, "raw_scores"),
        ({"texts": ["a", 1]}, "texts[1]"),
        ({"model": 5}, "model"),
    ):
        res = post(server, "/rerank", {"query": QUERY, "texts": DOCS, **bad})
        assert res.status_code == 422, res.text
        assert res.json()["error"]["field"] == field


def test_tei_truncation_direction_left_scores_the_last_window(server, reranker, tiny_bert_reranker_dir):
    texts = [LONG_DOC, LONG_DOC[:300], DOCS[0], LONG_DOC[200:]]
    left, right = one_window(tiny_bert_reranker_dir, "left"), one_window(tiny_bert_reranker_dir, "right")
    assert expected(left, texts) != expected(right, texts)  # the two ends score differently
    for direction, want in (("Left", expected(left, texts)), ("Right", expected(right, texts))):
        body = {"query": QUERY, "texts": texts, "truncate": True, "truncation_direction": direction}
        res = post(server, "/rerank", body)
        assert res.status_code == 200, res.text
        assert_ranked([(r["index"], r["score"]) for r in res.json()], want)
    # without truncate every long text gets its best window, whichever the direction
    res = post(server, "/rerank", {"query": QUERY, "texts": texts, "truncation_direction": "Left"})
    assert_ranked([(r["index"], r["score"]) for r in res.json()], expected(reranker, texts))


# -- model names (fast) ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLIENT_DEFAULT_MODELS)
def test_any_model_name_is_served_by_default(server, strict, reranker, name):
    want = expected(reranker, DOCS, top_n=3)
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        res = post(server, path, {"model": name, "query": QUERY, "documents": DOCS, "top_n": 3})
        assert res.status_code == 200, res.text
        assert_ranked([(r["index"], r["relevance_score"]) for r in res.json()["results"]], want)
        assert res.json()["model"] == MODEL  # the answer names what was really served
    # --strict-model-name: only the served name (and its aliases) pass
    res = post(strict, "/v1/rerank", {"model": name, "query": QUERY, "documents": DOCS})
    assert res.status_code == 404 and res.json()["error"]["field"] == "model"
    assert MODEL in res.json()["error"]["message"]
    res = post(strict, "/rerank", {"model": name, "query": QUERY, "texts": DOCS})
    assert res.status_code == 404 and res.json()["error"]["field"] == "model"
    res = post(strict, "/v1/rerank", {"model": MODEL, "query": QUERY, "documents": DOCS})
    assert res.status_code == 200, res.text


def test_open_webui_request_with_its_default_model(server, guarded, reranker):
    """Open WebUI's ExternalReranker: model "reranker", top_n = all, scores read back by index."""
    import requests

    docs = DOCS[::-1]
    payload = {"model": "reranker", "query": QUERY, "documents": docs, "top_n": len(docs)}
    for served, key in ((server, ""), (guarded, KEY)):  # it always sends a Bearer header
        r = requests.post(
            f"{served.url}/v1/rerank",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            json=payload,
            timeout=60,
        )
        r.raise_for_status()
        scores = [x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])]
        want = reranker.score([(QUERY, d) for d in docs])
        np.testing.assert_allclose(scores, want, atol=1e-5)


def test_strict_model_name_option(capsys):
    import argparse

    from tansaku.pipeline.cli.serve import add_serve

    parser = argparse.ArgumentParser(prog="tansaku")
    add_serve(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["serve", "idx"]).strict_model_name is False
    assert parser.parse_args(["serve", "idx", "--strict-model-name"]).strict_model_name is True
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    assert "--strict-model-name" in capsys.readouterr().out


# -- the Infinity shape (fast) --------------------------------------------------------------------------


def test_infinity_route_returns_documents_as_strings(server, reranker):
    want = expected(reranker, DOCS, top_n=3)
    for path in ("/infinity/rerank", "/infinity/v1/rerank"):
        body = {"model": "mixedbread-ai/mxbai-rerank-xsmall-v1", "query": QUERY, "documents": DOCS}
        res = post(server, path, {**body, "top_n": 3, "return_documents": True})
        assert res.status_code == 200, res.text
        out = res.json()
        assert out["object"] == "rerank" and out["model"] == MODEL
        assert_ranked([(r["index"], r["relevance_score"]) for r in out["results"]], want)
        assert [r["document"] for r in out["results"]] == [DOCS[i] for i, _ in want]
        assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
    res = post(server, "/infinity/rerank", {"query": QUERY, "documents": DOCS})
    assert all("document" not in r for r in res.json()["results"])
    # the Cohere paths keep Cohere's object
    res = post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS, "return_documents": True})
    assert all(isinstance(r["document"], dict) for r in res.json()["results"])


# -- API docs without the internet (fast) -----------------------------------------------------------------


def _references(html: str) -> list[str]:
    """Every URL a docs page loads: src/href attributes and the spec URL in its script."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""(?:url|specUrl)\s*:\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)
    return refs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_server(guarded, page):
    # with an API key too: a browser sends none for the page, its scripts or the spec
    res = httpx.get(guarded.url + page)
    assert res.status_code == 200 and "text/html" in res.headers["content-type"]
    html = res.text
    assert "://" not in html.replace("window.location.origin", ""), "an absolute URL (a CDN?)"
    refs = _references(html)
    assert "/openapi.json" in refs and any(r.endswith(".js") for r in refs), refs
    for ref in refs:
        assert ref.startswith("/"), ref
        asset = httpx.get(guarded.url + ref)
        assert asset.status_code == 200, (ref, asset.status_code)
        assert asset.content, ref
    # the assets are only what the docs need: the API itself still wants the key
    assert post(guarded, "/v1/rerank", {"query": QUERY, "documents": DOCS}).status_code == 401


# -- Prometheus metrics (fast) ----------------------------------------------------------------------------


def scrape(served: Served, **kwargs: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed: {(sample name, sorted labels): value}."""
    res = httpx.get(served.url + "/metrics", timeout=30, **kwargs)
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(res.text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_stages_and_work(server, strict, searcher, reranker):
    before, other_before = scrape(server), scrape(strict)
    res = post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert res.status_code == 200
    tokens = res.json()["usage"]["total_tokens"]
    res = post(server, "/v1/search", {"query": "東京の電波塔", "mode": "bm25"})
    assert res.status_code == 200
    reranked = res.json()["counts"]["reranked"]
    assert post(server, "/v1/rerank", {"query": ""}).status_code == 422
    httpx.get(server.url + "/no/such/path")
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "tansaku_http_requests_total"
    assert moved(requests, method="POST", endpoint="/v1/rerank", status="200") == 1
    assert moved(requests, method="POST", endpoint="/v1/rerank", status="422") == 1
    assert moved(requests, method="POST", endpoint="/v1/search", status="200") == 1
    assert moved(requests, method="GET", endpoint="other", status="404") == 1
    assert moved(requests, method="GET", endpoint="/metrics", status="200") == 1  # the first scrape
    latency = "tansaku_http_request_duration_seconds_count"
    assert moved(latency, method="POST", endpoint="/v1/rerank") == 2
    assert moved("tansaku_stage_duration_seconds_count", stage="rerank") == 2  # endpoint + search
    assert moved("tansaku_stage_duration_seconds_count", stage="retrieve") == 1
    assert moved("tansaku_stage_duration_seconds_sum", stage="rerank") > 0
    assert moved("tansaku_rerank_batch_size_count") == 2
    assert moved("tansaku_rerank_batch_size_sum") == len(DOCS) + reranked
    assert moved("tansaku_documents_scored_total") == len(DOCS) + reranked
    assert moved("tansaku_tokens_scored_total") == tokens
    assert value(after, "tansaku_queue_depth") == 0
    assert value(after, "tansaku_index_documents") == len(searcher.index) == 56
    assert value(after, "tansaku_index_version_timestamp_seconds") > 1.6e9
    # every app has its own registry: the other server counted none of this
    other = scrape(strict)
    for name, labels in (
        (requests, {"method": "POST", "endpoint": "/v1/rerank", "status": "200"}),
        ("tansaku_documents_scored_total", {}),
        ("tansaku_tokens_scored_total", {}),
    ):
        assert value(other, name, **labels) == value(other_before, name, **labels)
    assert ("tansaku_index_documents", ()) not in other  # a rerank-only server has no index


def test_metrics_need_the_api_key(guarded):
    assert httpx.get(guarded.url + "/metrics").status_code == 401
    samples = scrape(guarded, headers={"Authorization": f"Bearer {KEY}"})
    # the refused scrape was counted, under its endpoint
    assert value(samples, "tansaku_http_requests_total", method="GET", endpoint="/metrics", status="401") >= 1


# -- the real client libraries ----------------------------------------------------------------------------


@pytest.mark.slow  # importing rerankers loads its optional backends (~5-20 s)
def test_rerankers_tei_provider(server, reranker):
    from rerankers import Reranker

    client = Reranker("text-embeddings-inference", api_key="unused", url=f"{server.url}/rerank", verbose=0)
    since = len(server.paths)
    ranked = client.rank(QUERY, DOCS)
    assert server.posted(since) == ["/rerank"]
    got = [(DOCS.index(r.document.text), r.score) for r in ranked.results]
    assert_ranked(got, expected(reranker, DOCS))


def test_litellm_huggingface_provider(server, reranker):
    import litellm

    since = len(server.paths)
    res = litellm.rerank(
        model="huggingface/BAAI/bge-reranker-base",
        query=QUERY,
        documents=DOCS,
        top_n=3,
        api_base=server.url,
        api_key="unused",
    )
    assert server.posted(since) == ["/rerank"]
    want = expected(reranker, DOCS, top_n=3)
    assert_ranked([(r["index"], r["relevance_score"]) for r in res.results], want)
    assert [r["document"]["text"] for r in res.results] == [DOCS[i] for i, _ in want]


def test_litellm_infinity_provider(server, reranker):
    import litellm

    since = len(server.paths)
    res = litellm.rerank(
        model="infinity/mixedbread-ai/mxbai-rerank-xsmall-v1",
        query=QUERY,
        documents=DOCS,
        top_n=3,
        return_documents=True,
        api_base=f"{server.url}/infinity",
        api_key="unused",
    )
    assert server.posted(since) == ["/infinity/rerank"]
    want = expected(reranker, DOCS, top_n=3)
    assert_ranked([(r["index"], r["relevance_score"]) for r in res.results], want)
    assert [r["document"]["text"] for r in res.results] == [DOCS[i] for i, _ in want]


def test_haystack_tei_ranker_with_left_truncation(server, tiny_bert_reranker_dir):
    tei = pytest.importorskip(
        "haystack_integrations.components.rankers.huggingface_api",
        reason="huggingface-api-haystack needs Python 3.11+",
    )
    from haystack import Document

    texts = [LONG_DOC, DOCS[0], LONG_DOC[:300], DOCS[2]]
    docs = [Document(content=t) for t in texts]
    ranker = tei.HuggingFaceTEIRanker(url=server.url, top_k=3, token=None)
    since = len(server.paths)
    out = ranker.run(query=QUERY, documents=docs, truncation_direction=tei.TruncationDirection.LEFT)
    assert server.posted(since) == ["/rerank"]
    want = expected(one_window(tiny_bert_reranker_dir, "left"), texts, top_n=3)
    assert_ranked([(texts.index(d.content), d.score) for d in out["documents"]], want)
    # without a direction Haystack sends no truncate: best windows, as the server's reranker
    out = ranker.run(query=QUERY, documents=docs)
    want = expected(CrossEncoderReranker(tiny_bert_reranker_dir, max_length=128), texts, top_n=3)
    assert_ranked([(texts.index(d.content), d.score) for d in out["documents"]], want)


def test_llamaindex_cohere_rerank_with_its_default_model(server, reranker):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank

    post_processor = CohereRerank(api_key="unused", base_url=server.url, top_n=3)
    assert post_processor.model == "rerank-english-v3.0"  # not a name this server has
    nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(DOCS)]
    since = len(server.paths)
    out = post_processor.postprocess_nodes(nodes, query_str=QUERY)
    assert server.posted(since) == ["/v2/rerank"]
    assert_ranked([(int(n.node.node_id), n.score) for n in out], expected(reranker, DOCS, top_n=3))


def test_langchain_cohere_rerank(server, reranker):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    compressor = CohereRerank(cohere_api_key="unused", base_url=server.url, model="rerank-v3.5", top_n=3)
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(DOCS)]
    since = len(server.paths)
    out = compressor.compress_documents(docs, QUERY)
    assert server.posted(since) == ["/v2/rerank"]
    got = [(d.metadata["i"], d.metadata["relevance_score"]) for d in out]
    assert_ranked(got, expected(reranker, DOCS, top_n=3))
