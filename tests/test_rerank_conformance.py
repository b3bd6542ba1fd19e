"""Strict rerank-client conformance of ``tansaku serve``, one contract point per test.

A real server on 127.0.0.1 (uvicorn in a thread) serves a tiny cross-encoder; expected scores
come from the very reranker object it serves. Clients are httpx and, where a client library
sends the request shape, the unchanged Cohere SDK (v1/v2) and LiteLLM's jina_ai provider.
"""

from __future__ import annotations

import os
from typing import Any

# LiteLLM otherwise downloads its model price list on import.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fixtures_models import JA_PARAGRAPHS  # noqa: E402
from helpers import RERANK_DOCS, RERANK_QUERY  # noqa: E402
from loopback import Served  # noqa: E402
from tansaku.index.hit import Hit  # noqa: E402
from tansaku.pipeline.serve import create_app  # noqa: E402
from tansaku.rerank import CrossEncoderReranker, ranked_hits  # noqa: E402
from tansaku.rerank.base import document_texts  # noqa: E402

MODEL = "tiny-reranker"
QUERY = RERANK_QUERY
DOCS = [*RERANK_DOCS, "京都には古い寺や神社が多く、毎年たくさんの観光客が訪れます。"]
COHERE_PATHS = ("/v1/rerank", "/v2/rerank", "/rerank")
LONG_DOC = "".join(JA_PARAGRAPHS)  # ~480 tokens: several 128-token windows
MAX_LENGTH = 128


@pytest.fixture(scope="module")
def server(servers, reranker) -> Served:
    return servers.start(create_app(None, reranker, model_name=MODEL))


def post(served: Served, path: str, body: Any) -> httpx.Response:
    return httpx.post(served.url + path, json=body, timeout=60)


def expected(reranker: Any, docs: list[str], top_n: int | None = None) -> list[tuple[int, float]]:
    return [(int(h.doc_id), h.score) for h in reranker.rerank(QUERY, docs, top_n=top_n)]


def assert_results(results: list[dict[str, Any]], want: list[tuple[int, float]]) -> None:
    assert [r["index"] for r in results] == [i for i, _ in want]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in results], [s for _, s in want], rtol=0, atol=1e-6
    )


def tokens(reranker: CrossEncoderReranker, docs: list[str]) -> int:
    tok = reranker.tokenizer
    ids = tok([QUERY, *docs], add_special_tokens=False)["input_ids"]
    return sum(len(ids[0]) + len(d) + tok.num_special_tokens_to_add(pair=True) for d in ids[1:])


# -- paths, order, index, top_n ----------------------------------------------------------------------


@pytest.mark.parametrize("path", COHERE_PATHS)
def test_every_path_ranks_all_documents_by_descending_score(server, reranker, path):
    res = post(server, path, {"query": QUERY, "documents": DOCS, "return_documents": True})
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert_results(results, expected(reranker, DOCS))  # top_n omitted: every document
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    # index is the document's position in the request
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in results)
    assert sorted(r["index"] for r in results) == list(range(len(DOCS)))


@pytest.mark.parametrize("path", COHERE_PATHS)
def test_top_n_keeps_the_best(server, reranker, path):
    for top_n in (1, 3, len(DOCS) + 5):  # more than there are documents: all of them
        res = post(server, path, {"query": QUERY, "documents": DOCS, "top_n": top_n})
        assert res.status_code == 200, res.text
        assert_results(res.json()["results"], expected(reranker, DOCS, top_n=top_n))


@pytest.mark.parametrize("path", COHERE_PATHS)
@pytest.mark.parametrize("top_n", [0, -1])
def test_top_n_below_one_is_422(server, path, top_n):
    res = post(server, path, {"query": QUERY, "documents": DOCS, "top_n": top_n})
    assert res.status_code == 422, res.text
    assert res.json()["error"]["field"] == "top_n"


@pytest.mark.parametrize("path", COHERE_PATHS)
@pytest.mark.parametrize("extra", [{}, {"top_n": 2}])
def test_top_k_is_refused_not_taken_for_top_n(server, path, extra):
    res = post(server, path, {"query": QUERY, "documents": DOCS, "top_k": 2, **extra})
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["field"] == "top_k" and "top_k" in error["message"] and "top_n" in error["message"]


# -- scores --------------------------------------------------------------------------------------------


def test_relevance_score_is_the_sigmoid_and_raw_logits_have_their_own_name(server, reranker):
    logits = np.asarray(reranker.compute_score([(QUERY, d) for d in DOCS]), dtype=np.float32)
    sigmoid = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert (logits < 0).any() or (logits > 1).any(), "the test model's logits must leave [0, 1]"
    for path in COHERE_PATHS:
        default = post(server, path, {"query": QUERY, "documents": DOCS}).json()["results"]
        assert all("raw_score" not in r for r in default)
        np.testing.assert_allclose(
            [r["relevance_score"] for r in default], [sigmoid[r["index"]] for r in default], atol=1e-6
        )
        raw = post(server, path, {"query": QUERY, "documents": DOCS, "raw_scores": True})
        assert raw.status_code == 200, raw.text
        results = raw.json()["results"]
        # relevance_score never carries the logit, asked for or not
        assert [(r["index"], r["relevance_score"]) for r in results] == [
            (r["index"], r["relevance_score"]) for r in default
        ]
        np.testing.assert_allclose(
            [r["raw_score"] for r in results], [logits[r["index"]] for r in results], atol=1e-6
        )
        assert [r["raw_score"] for r in results] == sorted((r["raw_score"] for r in results), reverse=True)
    # TEI's body keeps TEI's contract: raw_scores puts the logit in "score"
    tei = post(server, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    np.testing.assert_allclose([r["score"] for r in tei], [logits[r["index"]] for r in tei], atol=1e-6)


def test_logit_activation_reranker_still_gets_sigmoid_scores(servers, tiny_bert_reranker_dir, reranker):
    logit_model = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=MAX_LENGTH, activation="none")
    served = servers.start(create_app(None, logit_model, model_name=MODEL))
    res = post(served, "/v2/rerank", {"query": QUERY, "documents": DOCS})
    assert res.status_code == 200, res.text
    assert_results(res.json()["results"], expected(reranker, DOCS))  # the sigmoid model's scores


class ScoreOnlyReranker:
    """A user-written reranker (only the Reranker protocol, no compute_score) over a real model.

    ``squash`` False returns the model's logits from ``score``, as a careless plugin might.
    """

    def __init__(self, model: CrossEncoderReranker, squash: bool) -> None:
        self.model, self.squash = model, squash
        self.model_name = "score-only"

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        logits = np.asarray(self.model.compute_score(list(pairs), normalize=self.squash))
        return logits.astype(np.float32)

    def rerank(self, query: str, docs: list[Hit | str], top_n: int | None = None) -> list[Hit]:
        return ranked_hits(docs, self.score([(query, t) for t in document_texts(docs)]), top_n)


def test_a_reranker_returning_logits_is_a_server_error_not_a_relevance_score(servers, reranker):
    good = servers.start(create_app(None, ScoreOnlyReranker(reranker, squash=True)))
    res = post(good, "/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert res.status_code == 200, res.text
    assert_results(res.json()["results"], expected(reranker, DOCS))
    res = post(good, "/v1/rerank", {"query": QUERY, "documents": DOCS, "raw_scores": True})
    assert res.status_code == 422 and res.json()["error"]["field"] == "raw_scores"
    bad = servers.start(create_app(None, ScoreOnlyReranker(reranker, squash=False)))
    res = post(bad, "/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert res.status_code == 500, res.text
    assert "outside [0, 1]" in res.json()["error"]["message"] and "relevance_score" not in res.text


# -- response shape ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COHERE_PATHS)
def test_document_is_omitted_unless_requested_and_billing_is_reported(server, reranker, path):
    for flag in ({}, {"return_documents": False}):
        res = post(server, path, {"query": QUERY, "documents": DOCS, **flag})
        assert res.status_code == 200, res.text
        body = res.json()
        assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
        assert "null" not in res.text and '"document"' not in res.text  # absent, never null
        assert body["meta"]["billed_units"] == {"search_units": 1}
        n = tokens(reranker, DOCS)
        assert body["usage"] == {"total_tokens": n, "prompt_tokens": n}  # Jina's usage
        assert body["meta"]["tokens"] == {"input_tokens": n, "output_tokens": 0}


def test_search_units_count_per_hundred_documents(server):
    docs = [f"文書{i}" for i in range(101)]
    body = post(server, "/v2/rerank", {"query": QUERY, "documents": docs, "top_n": 1}).json()
    assert body["meta"]["billed_units"]["search_units"] == 2


@pytest.mark.slow
def test_litellm_jina_provider_reads_usage(server, reranker):
    import litellm

    res = litellm.rerank(
        model=f"jina_ai/{MODEL}", query=QUERY, documents=DOCS, top_n=2, api_base=server.url, api_key="unused"
    )
    assert_results([dict(r) for r in res.results], expected(reranker, DOCS, top_n=2))
    assert res.meta["billed_units"]["total_tokens"] == tokens(reranker, DOCS)


# -- v1 objects with rank_fields, v2 max_tokens_per_doc ----------------------------------------------


def test_v1_object_documents_with_rank_fields_through_the_cohere_sdk(server, reranker):
    import cohere

    docs = [
        {"title": t, "text": d, "year": 2000 + i}
        for i, (t, d) in enumerate(zip(["東京", "富士山", "猫", "Tokyo"], DOCS, strict=False))
    ]
    res = cohere.Client(api_key="unused", base_url=server.url).rerank(
        model=MODEL, query=QUERY, documents=docs, rank_fields=["title", "text"], return_documents=True
    )
    joined = [f"title: {d['title']}\ntext: {d['text']}" for d in docs]
    assert_results(
        [{"index": r.index, "relevance_score": r.relevance_score} for r in res.results],
        expected(reranker, joined),
    )
    # documents come back whole (all their fields), in result order
    raw = post(
        server,
        "/v1/rerank",
        {"query": QUERY, "documents": docs, "rank_fields": ["title", "text"], "return_documents": True},
    )
    assert [r["document"] for r in raw.json()["results"]] == [docs[r.index] for r in res.results]
    # rank_fields order matters: it is the order of the lines the model reads
    swapped = post(
        server, "/v1/rerank", {"query": QUERY, "documents": docs, "rank_fields": ["text", "title"]}
    ).json()["results"]
    assert_results(swapped, expected(reranker, [f"text: {d['text']}\ntitle: {d['title']}" for d in docs]))


def _cut(reranker: CrossEncoderReranker, text: str, n: int) -> str:
    enc = reranker.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return text[: enc["offset_mapping"][n - 1][1]] if len(enc["input_ids"]) > n else text


def test_v2_max_tokens_per_doc_cuts_then_windows(server, reranker, tiny_bert_reranker_dir):
    import cohere

    docs = [LONG_DOC[i * 37 :] for i in range(6)] + [DOCS[0]]
    limit = 300  # above the 128-token window: each cut document is still windowed
    cut = [_cut(reranker, d, limit) for d in docs]
    assert all(len(reranker.tokenizer(c, add_special_tokens=False)["input_ids"]) <= limit for c in cut)
    want = expected(reranker, cut)
    res = cohere.ClientV2(api_key="unused", base_url=server.url).rerank(
        model=MODEL, query=QUERY, documents=docs, max_tokens_per_doc=limit
    )
    assert_results([{"index": r.index, "relevance_score": r.relevance_score} for r in res.results], want)
    raw = post(server, "/v2/rerank", {"query": QUERY, "documents": docs, "max_tokens_per_doc": limit})
    assert raw.json()["usage"]["total_tokens"] == tokens(reranker, cut)
    # the cut really is windowed (not scored as its first window only) and really is cut
    # (not the whole document): for these documents both give other scores
    first_window = CrossEncoderReranker(tiny_bert_reranker_dir, max_length=MAX_LENGTH, max_chunks_per_doc=1)
    assert dict(want) != dict(expected(first_window, cut))
    assert dict(want) != dict(expected(reranker, docs))
