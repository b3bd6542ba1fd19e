"""tansaku inside real RAG stacks: the LangChain and LlamaIndex integrations.

Real langchain-core and llama-index-core, a real sample index, a tiny cross-encoder and a real
``tansaku serve`` on 127.0.0.1; every expected result is tansaku's own search or rerank of the
same query. (``ContextualCompressionRetriever`` lives in langchain-classic, which is not
installable here; langchain 1.x and langchain-core do not have it, so the LangChain reranker is
exercised through ``compress_documents`` and a plain runnable chain.)
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "langchain_core", reason="langchain-core is not installed (pip install 'tansaku[langchain]')"
)
pytest.importorskip(
    "llama_index.core", reason="llama-index-core is not installed (pip install 'tansaku[llamaindex]')"
)

from langchain_core.documents import Document  # noqa: E402
from langchain_core.runnables import RunnableLambda, RunnablePassthrough  # noqa: E402
from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402

import tansaku  # noqa: E402
from loopback import Served  # noqa: E402
from tansaku.index import SAMPLE_CORPUS, ConfigError, Hit, build_index, read_file  # noqa: E402
from tansaku.pipeline.api import Searcher  # noqa: E402
from tansaku.pipeline.integrations import langchain as lc  # noqa: E402
from tansaku.pipeline.integrations import llamaindex as li  # noqa: E402
from tansaku.pipeline.integrations.client import RemoteError  # noqa: E402

MODEL = "tiny-reranker"
KEY = "integration-key"
QUERY = "東京の電波塔と富士山の高さ"  # BM25 matches more than 30 documents
OTHER_QUERY = "富士山の高さ"
SETTINGS = {"retrieve_k": 30, "rerank_k": 20, "top_n": 5}


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("integrations") / "idx"
    build_index(path, read_file(SAMPLE_CORPUS), progress=False).close()
    return path


@pytest.fixture(scope="module")
def reranking(index_path, reranker) -> Iterator[Searcher]:
    """Retrieve 30 with BM25, rerank the best 20, return 5."""
    with tansaku.open(index_path, reranker=reranker, **SETTINGS) as searcher:
        yield searcher


@pytest.fixture(scope="module")
def plain(index_path) -> Iterator[Searcher]:
    """The same first stage without a reranker: its best 20 are what `reranking` reranks."""
    with tansaku.open(index_path, retrieve_k=30, top_n=20) as searcher:
        yield searcher


@pytest.fixture(scope="module")
def server(servers, reranking, reranker) -> Served:
    # strict: an unknown model name is a 404 the integrations must report
    return servers.start(create_app_for(reranking, reranker, strict_model_name=True))


@pytest.fixture(scope="module")
def guarded(servers, reranking, reranker) -> Served:
    return servers.start(create_app_for(reranking, reranker, api_key=KEY))


def create_app_for(searcher: Searcher, reranker: Any, **kwargs: Any) -> Any:
    from tansaku.pipeline.serve import create_app

    return create_app(searcher, reranker, model_name=MODEL, **kwargs)


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


# -- expectations ----------------------------------------------------------------------------------


def assert_documents(docs: list[Document], hits: list[Hit], *, score_key: str = "score") -> None:
    """Documents carry the hits: order, id, text, title, score, rank, stage, record metadata."""
    assert [d.id for d in docs] == [h.doc_id for h in hits] and hits
    for doc, hit in zip(docs, hits, strict=True):
        assert doc.page_content == hit.text and doc.metadata["id"] == hit.doc_id
        assert doc.metadata["title"] == hit.title
        assert doc.metadata[score_key] == pytest.approx(hit.score, abs=1e-6)
        for key, value in hit.metadata.items():
            assert doc.metadata[key] == value
        if score_key == "score":
            assert (doc.metadata["rank"], doc.metadata["stage"]) == (hit.rank, hit.stage)


def assert_nodes(nodes: list[NodeWithScore], hits: list[Hit]) -> None:
    assert [n.node.node_id for n in nodes] == [h.doc_id for h in hits] and hits
    for node, hit in zip(nodes, hits, strict=True):
        assert isinstance(node.node, TextNode) and node.node.text == hit.text
        assert node.node.metadata == {**hit.metadata, "title": hit.title}
        assert node.score == pytest.approx(hit.score, abs=1e-6)


# -- LangChain: retriever ---------------------------------------------------------------------------


def test_langchain_retriever_in_process_equals_search(index_path, reranking, reranker):
    want = reranking.search(QUERY).hits
    assert [h.stage for h in want] == ["rerank"] * 5
    for retriever in (
        lc.TansakuRetriever(index=reranking),
        lc.TansakuRetriever(index=index_path, reranker=reranker, **SETTINGS),
        lc.TansakuRetriever(index=str(index_path), reranker=reranker, **SETTINGS),
    ):
        assert_documents(retriever.invoke(QUERY), want)


def test_langchain_retriever_settings_pass_through(reranking):
    retriever = lc.TansakuRetriever(index=reranking, top_n=3, retrieve_k=10)
    # retrieve_k alone shrinks the default rerank_k with it, as the server does
    assert_documents(
        retriever.invoke(QUERY), reranking.search(QUERY, top_n=3, retrieve_k=10, rerank_k=10).hits
    )
    # per call
    assert_documents(
        retriever.invoke(QUERY, top_n=2, rerank_k=4),
        reranking.search(QUERY, top_n=2, retrieve_k=10, rerank_k=4).hits,
    )
    with pytest.raises(ConfigError, match="unknown search setting.*'k'"):
        retriever.invoke(QUERY, k=3)
    with pytest.raises(ConfigError, match="top_n"):
        retriever.invoke(QUERY, top_n=0)


def test_langchain_retriever_remote_equals_search(server, reranking):
    since = len(server.paths)
    retriever = lc.TansakuRetriever(url=server.url, top_n=3, retrieve_k=20, rerank_k=10)
    docs = retriever.invoke(OTHER_QUERY)
    assert_documents(docs, reranking.search(OTHER_QUERY, top_n=3, retrieve_k=20, rerank_k=10).hits)
    assert server.posted(since) == ["/v1/search"]
    # server defaults when nothing is set; async goes the same way
    assert_documents(
        asyncio.run(lc.TansakuRetriever(url=server.url).ainvoke(QUERY)), reranking.search(QUERY).hits
    )


def test_langchain_retriever_async_in_process(reranking):
    retriever = lc.TansakuRetriever(index=reranking, top_n=4)

    async def both() -> list[list[Document]]:
        return list(await asyncio.gather(retriever.ainvoke(QUERY), retriever.ainvoke(OTHER_QUERY)))

    first, second = asyncio.run(both())
    assert_documents(first, reranking.search(QUERY, top_n=4).hits)
    assert_documents(second, reranking.search(OTHER_QUERY, top_n=4).hits)


# -- LangChain: reranker (document compressor) ----------------------------------------------------------


def test_langchain_reranker_equals_the_pipelines_rerank(plain, reranking, reranker, server):
    candidates = lc.TansakuRetriever(index=plain).invoke(QUERY)  # first stage, best 20
    result = reranking.search(QUERY)
    assert [d.id for d in candidates] == [h.doc_id for h in result.candidates[:20]]
    assert {d.metadata["stage"] for d in candidates} == {"bm25"}
    want = result.hits
    since = len(server.paths)
    for compressor in (
        lc.TansakuReranker(model=reranker, top_n=5),
        lc.TansakuReranker(url=server.url, model=MODEL, top_n=5),
    ):
        reranked = list(compressor.compress_documents(candidates, QUERY))
        assert_documents(reranked, want, score_key="relevance_score")
        # the retriever's own metadata is kept beside the new score
        assert all(d.metadata["stage"] == "bm25" for d in reranked)
    assert server.posted(since) == ["/v1/rerank"]


def test_langchain_reranker_on_any_documents(reranker, server, tiny_bert_reranker_dir):
    docs = [
        Document(page_content=t, metadata={"source": i})
        for i, t in enumerate(
            ["東京タワーは東京の電波塔です。", "富士山は日本で一番高い山です。", "猫はネズミを捕まえます。"]
        )
    ]
    want = reranker.rerank(QUERY, [d.page_content for d in docs])
    for compressor in (
        lc.TansakuReranker(model=reranker),
        lc.TansakuReranker(model=str(tiny_bert_reranker_dir)),
        lc.TansakuReranker(url=server.url),
    ):
        out = list(compressor.compress_documents(docs, QUERY))  # top_n None: all, reordered
        assert [d.metadata["source"] for d in out] == [int(h.doc_id) for h in want]
        assert [d.metadata["relevance_score"] for d in out] == pytest.approx(
            [h.score for h in want], abs=1e-6
        )
        assert all(0 <= d.metadata["relevance_score"] <= 1 for d in out)
    assert lc.TansakuReranker(model=reranker).compress_documents([], QUERY) == []
    out = asyncio.run(lc.TansakuReranker(model=reranker, top_n=1).acompress_documents(docs, QUERY))
    assert [d.metadata["source"] for d in out] == [int(want[0].doc_id)]
    # title_key=None: only page_content is read, even when a title is there
    titled = [Document(page_content=d.page_content, metadata={"title": "猫"}) for d in docs]
    out = lc.TansakuReranker(model=reranker, title_key=None).compress_documents(titled, QUERY)
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([h.score for h in want])


def test_langchain_retrieve_then_rerank_chain(plain, reranking, reranker):
    retriever = lc.TansakuRetriever(index=plain)
    compressor = lc.TansakuReranker(model=reranker, top_n=5)
    chain = {"docs": retriever, "query": RunnablePassthrough()} | RunnableLambda(
        lambda x: compressor.compress_documents(x["docs"], x["query"])
    )
    assert_documents(list(chain.invoke(QUERY)), reranking.search(QUERY).hits, score_key="relevance_score")


# -- LlamaIndex --------------------------------------------------------------------------------------


def test_llamaindex_retriever_in_process_and_remote_equal_search(index_path, reranking, reranker, server):
    want = reranking.search(QUERY).hits
    for retriever in (
        li.TansakuRetriever(reranking),
        li.TansakuRetriever(index_path, reranker=reranker, **SETTINGS),
        li.TansakuRetriever(url=server.url, **SETTINGS),
    ):
        assert_nodes(retriever.retrieve(QUERY), want)
    remote = li.TansakuRetriever(url=server.url, top_n=2, retrieve_k=10, mode="bm25")
    want = reranking.search(OTHER_QUERY, top_n=2, retrieve_k=10, rerank_k=10).hits
    assert_nodes(asyncio.run(remote.aretrieve(OTHER_QUERY)), want)
    remote.top_n = 1  # settings are plain attributes
    assert_nodes(remote.retrieve(OTHER_QUERY), want[:1])


def test_llamaindex_reranker_equals_the_pipelines_rerank(plain, reranking, reranker, server):
    candidates = li.TansakuRetriever(plain).retrieve(QUERY)
    result = reranking.search(QUERY)
    assert [n.node.node_id for n in candidates] == [h.doc_id for h in result.candidates[:20]]
    want = result.hits
    for post in (
        li.TansakuReranker(model=reranker, top_n=5),
        li.TansakuReranker(url=server.url, model=MODEL, top_n=5),
    ):
        assert_nodes(post.postprocess_nodes(candidates, query_str=QUERY), want)
        assert_nodes(asyncio.run(post.apostprocess_nodes(candidates, query_str=QUERY)), want)
    with pytest.raises(ConfigError, match="needs the query"):
        li.TansakuReranker(model=reranker).postprocess_nodes(candidates)
    assert li.TansakuReranker(model=reranker).postprocess_nodes([], query_str=QUERY) == []


def test_llamaindex_query_engine_runs_retriever_and_reranker(plain, reranking, reranker):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText

    engine = RetrieverQueryEngine(
        li.TansakuRetriever(plain),
        node_postprocessors=[li.TansakuReranker(model=reranker, top_n=5)],
        # NoText never calls the LLM, but LlamaIndex wants one (else it looks for OpenAI)
        response_synthesizer=NoText(llm=MockLLM()),
    )
    assert_nodes(engine.query(QUERY).source_nodes, reranking.search(QUERY).hits)


# -- filters --------------------------------------------------------------------------------------------


def test_filter_passes_through_in_process_and_remote(reranking, server):
    query, where = "富士山 Mount Fuji", {"lang": "en"}
    want = reranking.search(query, filter=where).hits
    assert want and all(h.metadata["lang"] == "en" for h in want)
    assert want != reranking.search(query).hits
    for docs in (
        lc.TansakuRetriever(index=reranking, filter=where).invoke(query),
        lc.TansakuRetriever(index=reranking).invoke(query, filter=where),
        lc.TansakuRetriever(url=server.url).invoke(query, filter=where),
    ):
        assert_documents(docs, want)
    for retriever in (
        li.TansakuRetriever(reranking, filter=where),
        li.TansakuRetriever(url=server.url, filter=where),
    ):
        assert_nodes(retriever.retrieve(query), want)
    # a bad filter is refused by the searcher, or by the server naming the field
    bad = {"year": {"$bogus": 1}}
    with pytest.raises(ConfigError, match="bogus"):
        lc.TansakuRetriever(index=reranking).invoke(query, filter=bad)
    with pytest.raises(RemoteError, match="bogus") as err:
        lc.TansakuRetriever(url=server.url).invoke(query, filter=bad)
    assert (err.value.status, err.value.field) == (422, "filter")
    with pytest.raises(ConfigError, match="JSON object"):
        li.TansakuRetriever(url=server.url, filter='{"lang": "en"}').retrieve(query)


# -- errors ----------------------------------------------------------------------------------------------


def test_server_errors_become_remote_errors(server, guarded, reranking, reranker):
    with pytest.raises(RemoteError, match="unknown model") as err:
        lc.TansakuReranker(url=server.url, model="rerank-v3.5").compress_documents(
            [Document(page_content="文書")], QUERY
        )
    assert (err.value.status, err.value.field) == (404, "model")
    with pytest.raises(RemoteError, match="dense index") as err:  # a BM25-only index
        li.TansakuRetriever(url=server.url, mode="dense").retrieve(QUERY)
    assert (err.value.status, err.value.field) == (422, "mode")
    with pytest.raises(RemoteError, match="API key") as err:
        lc.TansakuRetriever(url=guarded.url).invoke(QUERY)
    assert err.value.status == 401
    assert_documents(
        lc.TansakuRetriever(url=guarded.url, api_key=KEY).invoke(QUERY), reranking.search(QUERY).hits
    )
    docs = [Document(page_content="東京タワー"), Document(page_content="猫")]
    assert (
        len(
            li.TansakuReranker(url=guarded.url, api_key=KEY).postprocess_nodes(
                [NodeWithScore(node=TextNode(text=d.page_content)) for d in docs], query_str=QUERY
            )
        )
        == 2
    )
    down = closed_port_url()
    with pytest.raises(RemoteError, match="cannot reach") as err:
        lc.TansakuRetriever(url=down).invoke(QUERY)
    assert err.value.status is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, r: lc.TansakuRetriever(), "either index= .* or url="),
        (lambda p, r: lc.TansakuRetriever(index=p, url="http://127.0.0.1:1"), "not both"),
        (lambda p, r: lc.TansakuRetriever(url="http://127.0.0.1:1", reranker=r), "own --reranker"),
        (lambda p, r: lc.TansakuRetriever(index="http://127.0.0.1:1"), "pass it as url="),
        (lambda p, r: lc.TansakuRetriever(index=p, top_n=0), "top_n must be an integer >= 1"),
        (lambda p, r: lc.TansakuRetriever(index=p, retrieve_k=2.5), "retrieve_k"),
        (lambda p, r: lc.TansakuRetriever(url="127.0.0.1:8080"), "http:// or https://"),
        (lambda p, r: lc.TansakuReranker(), "give model="),
        (lambda p, r: lc.TansakuReranker(model=r, top_n=0), "top_n"),
        (lambda p, r: lc.TansakuReranker(model=42), "rerank\\(query, docs, top_n\\)"),
        (lambda p, r: lc.TansakuReranker(url="http://127.0.0.1:1", model=r), "name of the server"),
        (lambda p, r: li.TansakuRetriever(p, rerank_k=-1), "rerank_k"),
        (lambda p, r: li.TansakuRetriever(), "either index="),
        (lambda p, r: li.TansakuReranker(model=r, top_n=True), "top_n"),
    ],
)
def test_bad_settings_are_config_errors(index_path, reranker, make, message):
    with pytest.raises(ConfigError, match=message):
        make(index_path, reranker)


@pytest.mark.parametrize(
    ("module", "package", "extra"),
    [
        ("tansaku.pipeline.integrations.langchain", "langchain_core", "tansaku[langchain]"),
        ("tansaku.pipeline.integrations.llamaindex", "llama_index", "tansaku[llamaindex]"),
    ],
)
def test_missing_framework_names_the_extra(monkeypatch, module, package, extra):
    # as if the framework were not installed: importing it fails, and nothing is cached
    monkeypatch.setitem(sys.modules, package, None)
    for name in [n for n in sys.modules if n == module or n.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=extra.replace("[", "\\[").replace("]", "\\]")):
        importlib.import_module(module)
