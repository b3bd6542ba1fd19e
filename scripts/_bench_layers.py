"""The layers above the BM25 kernel, for scripts/bench_bm25.py (see its --help).

One worker process builds a tansaku index of the JSQuAD paragraphs (``ja-surface``, BM25 only)
and a bm25s-numba index of the same tokens, then times, per query and round-robin (best of
``repeat`` runs over all questions after a warm-up, so both engines see the same machine):

* ``kernel``: ``BM25Index.top_k`` on tokens vs ``bm25s`` ``retrieve`` on the same tokens;
* ``tokenise``: the ``ja-surface`` analyzer alone;
* ``hits``: the retriever's ``k`` Hit objects alone (``ranked_hits`` over ids and scores
  computed beforehand), the part of the retriever no faster kernel can remove;
* ``retriever``: ``BM25Retriever.retrieve`` on the raw question (tokenise + kernel + ``Hit``
  objects) vs bm25s-numba on the raw question: the same ``ja-surface`` tokenising + its
  ``retrieve`` (bm25s's own ``bm25s.tokenize`` splits on ``\\w+`` and cannot segment Japanese,
  so it would not be the same search);
* ``api``: ``tansaku.open(...).search(q, mode="bm25", top_n=k)``: ids, scores, ranks and the
  hits' title/text/metadata, fetched lazily (one query for all hits on the first read): the
  row leaves them unread; ``api + text`` reads every hit's text.

Each query's results are dropped before the next, as a server does (a batch that keeps every
hit alive makes Python's garbage collector pass over all of them). bm25s returns arrays of
positions and scores, no ids or text.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WARMUP = 50
CHECKED = 200
GOAL_RETRIEVER = 1.5  # retriever time <= this x (tokenise + kernel)
GOAL_API = 0.5  # API q/s >= this x bm25s-numba on raw queries
ROWS = (
    ("kernel on tokens", "kernel", "bm25s kernel"),
    ("tokenise only (ja-surface)", "tokenise", None),
    ("k Hit objects alone (ranked_hits)", "hits", None),
    ("retriever on a raw query", "retriever", "bm25s raw"),
    ("API search(top_n=k), text unread", "api", "bm25s raw"),
    ("API search(top_n=k) + every hit's text", "api text", "bm25s raw"),
)


def jsquad_records(path: Path) -> list[dict[str, str]]:
    """The distinct JSQuAD paragraphs as records ``{"id", "title", "text"}``, in the order of
    bench_bm25's ``load_jsquad`` (its "title text" is what tansaku indexes for them)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    records: dict[str, dict[str, str]] = {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            title, _, text = paragraph["context"].partition("[SEP]")
            context = f"{title.strip()} {text.strip()}".strip()
            if context not in records:
                records[context] = {"id": f"p{len(records)}", "title": title.strip(), "text": text.strip()}
    return list(records.values())


def write_input(cache: Path, records: list[dict[str, str]], questions: list[str]) -> None:
    (cache / "layers.json").write_text(
        json.dumps({"records": records, "questions": questions}, ensure_ascii=False), "utf-8"
    )


def _best_rates(rows: dict[str, Callable[[int], Any]], n: int, repeat: int) -> dict[str, float]:
    """Queries/s of each row: best of ``repeat`` runs over ``n`` queries, rows taking turns."""
    for fn in rows.values():
        for i in range(min(WARMUP, n)):
            fn(i)
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(max(1, repeat)):
        for name, fn in rows.items():
            start = time.perf_counter()
            for i in range(n):
                fn(i)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: n / seconds for name, seconds in best.items()}


def run_layers(cache: Path, k: int, repeat: int) -> dict[str, Any]:
    """Every layer's queries/s and the fast-path checks (JSON-ready)."""
    import bm25s

    import tansaku
    from tansaku.index import BuildConfig, build_index, read_dicts
    from tansaku.index.hit import indexed_text, ranked_hits
    from tansaku.retrieve import BM25Retriever

    data = json.loads((cache / "layers.json").read_text("utf-8"))
    records, questions = data["records"], data["questions"]
    with tempfile.TemporaryDirectory(prefix="bench_layers_") as tmp:
        path = Path(tmp) / "index"
        build_index(path, read_dicts(records), BuildConfig(analyzer="ja-surface"), progress=False).close()
        with tansaku.open(path) as searcher:
            index = searcher.index
            analyzer = index.analyzer
            model = bm25s.BM25(method="robertson", backend="numba")
            model.index(
                [analyzer.tokenize(indexed_text(r["title"], r["text"])) for r in records], show_progress=False
            )
            model.save(Path(tmp) / "bm25s", show_progress=False)
            model = bm25s.BM25.load(Path(tmp) / "bm25s", mmap=True, show_progress=False, backend="numba")
            tokens = [analyzer.tokenize(q) for q in questions]
            retriever = BM25Retriever(index)
            found = [index.bm25.top_k(t, k) for t in tokens]
            ranked = [(index.ids_at(pos), scores.tolist()) for pos, scores in found]

            def bm25s_search(query_tokens: list[str]) -> Any:
                return model.retrieve([query_tokens], k=k, show_progress=False, n_threads=0)

            def read_text(i: int) -> None:
                for hit in searcher.search(questions[i], mode="bm25", top_n=k).hits:
                    hit.text  # noqa: B018  (the read that fetches them)

            rows: dict[str, Callable[[int], Any]] = {
                "kernel": lambda i: index.bm25.top_k(tokens[i], k),
                "bm25s kernel": lambda i: bm25s_search(tokens[i]),
                "tokenise": lambda i: analyzer.tokenize(questions[i]),
                "hits": lambda i: ranked_hits(*ranked[i], "bm25"),
                "retriever": lambda i: retriever.retrieve(questions[i], k),
                "bm25s raw": lambda i: bm25s_search(analyzer.tokenize(questions[i])),
                "api": lambda i: searcher.search(questions[i], mode="bm25", top_n=k),
                "api text": read_text,
            }
            qps = _best_rates(rows, len(questions), repeat)
            same = checks(searcher, retriever, tokens, questions[:CHECKED], k)
    return {"queries": len(questions), "qps": qps, "checks": same}


def checks(
    searcher: Any, retriever: Any, tokens: list[list[str]], questions: list[str], k: int
) -> dict[str, bool]:
    """The fast paths against the plain code on ``questions``: same ids, scores, order, text."""
    from tansaku.index.hit import Hit

    index = searcher.index
    retriever_ok = api_ok = True
    for query_tokens, question in zip(tokens, questions, strict=False):
        positions, scores = index.bm25.top_k(query_tokens, k)
        plain = [
            Hit(str(index.doc_ids[int(p)]), float(s), rank, "bm25")
            for rank, (p, s) in enumerate(zip(positions, scores, strict=True), 1)
        ]
        hits = retriever.retrieve(question, k)
        retriever_ok &= hits == plain
        records = index.corpus.get_many([h.doc_id for h in plain])
        hydrated = [h.replace(title=records[h.doc_id].title, text=records[h.doc_id].text) for h in plain]
        found = searcher.search(question, mode="bm25", top_n=k).hits
        api_ok &= found == hydrated and [h.text for h in found] == [h.text for h in hydrated]
    return {"retriever == plain hits": retriever_ok, "API hits == plain hydrated hits": api_ok}


def report_lines(layers: dict[str, Any], k: int, repeat: int) -> list[str]:
    """The layers table, its notes and the two goals."""
    from _bench_common import fmt_num, format_table

    qps = layers["qps"]
    # tokenise + kernel, per query: the floor the retriever is measured against
    floor = 1 / (1 / qps["tokenise"] + 1 / qps["kernel"])
    table = []
    for label, ours, theirs in ROWS:
        other = qps[theirs] if theirs else None
        ratio = fmt_num(qps[ours] / other) if other else ""
        table.append(
            [label.replace("=k", f"={k}"), fmt_num(qps[ours]), fmt_num(other) if other else "", ratio]
        )
        if ours == "tokenise":
            table.append(["tokenise + kernel (their times added)", fmt_num(floor), "", ""])
    lines = [
        f"\n== layers above the kernel: JSQuAD, ja-surface, k={k}, {layers['queries']:,} queries, one "
        f"process, rows taking turns, best of {repeat}; each query's results dropped as a server does ==",
        format_table(["layer", "tansaku q/s", "bm25s-numba q/s", "ratio"], table),
        "- bm25s-numba raw query = the same ja-surface tokenising + its retrieve (n_threads=0); "
        "bm25s.tokenize cannot segment Japanese. bm25s returns position and score arrays; "
        "tansaku returns Hit objects (id, score, rank), the API also the hits' text",
        "- API: title/text/metadata are fetched on the first read, all hits at once in one SQLite "
        "query; the last row reads every hit's text",
        f"- the retriever's Hit objects alone (ranked_hits over its ids and scores) take "
        f"{floor / qps['hits']:.2f}x the time of tokenise + kernel: the floor of a list of "
        "Python objects (see docs/performance.md)",
        *(f"- {name}: {ok}" for name, ok in layers["checks"].items()),
    ]
    over = floor / qps["retriever"]
    api = qps["api"] / qps["bm25s raw"]
    lines.append(
        f"GOALS: retriever {over:.2f}x the time of tokenise + kernel (goal <= {GOAL_RETRIEVER:g}x) "
        f"{'PASS' if over <= GOAL_RETRIEVER else 'MISS'}; API search {api:.2f}x bm25s-numba raw "
        f"(goal >= {GOAL_API:g}x) {'PASS' if api >= GOAL_API else 'MISS'}; API + text "
        f"{qps['api text'] / qps['bm25s raw']:.2f}x"
    )
    return lines
