#!/usr/bin/env python3
"""Benchmark tansaku's BM25 against bm25s and rank-bm25 on JSQuAD (run with --help)."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import best_time, dir_size_mb, fmt_num, format_table, peak_rss_mb
from _bench_layers import jsquad_records, report_lines, run_layers, write_input

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSQUAD = REPO.parent / "shared" / "data" / "jsquad" / "valid-v1.3.json"
BM25S_METHOD = "robertson"  # Okapi's tf part and idf; differs only where idf < 0 (see notes)
RANK_BM25_MAX_DOCS = 200_000  # rank-bm25's get_scores is O(N) Python per query term
WARMUP_QUERIES = 50
CHECK_QUERIES = 200
SEED = 0
GOAL_VS_BM25S = 1.0
GOAL_VS_RANK = 30.0
QUICK = {"queries": 500, "repeat": 1, "rank_bm25_queries": 100}
DEFAULTS = {"queries": None, "repeat": 3, "rank_bm25_queries": 300}

DESCRIPTION = f"""\
Benchmark tansaku's BM25Index against bm25s (method="{BM25S_METHOD}", the variant closest to
Okapi) and rank-bm25's BM25Okapi on the JSQuAD valid corpus.

Corpus = the distinct paragraphs, "title [SEP] text" turned into "title text"; queries = the
questions. Every engine gets THE SAME tokens: tansaku's "ja-surface" analyzer (fugashi + unidic-lite)
runs once up front (its time is reported separately) and the token lists are handed to all
engines. Each engine then runs in its own subprocess, so its peak RSS is its own (Linux VmHWM;
getrusage ru_maxrss is not used there because a child inherits its parent's high-water mark;
"base RSS" = after imports and loading the tokens), and measures: index time (build from
tokens), index size on disk (save to a temp dir; rank-bm25 cannot save), load time (tansaku
mmap=True, bm25s mmap=True), single query/s (one call per query, k results) on the freshly
built index and on the mmap-loaded one (the verdict uses the loaded one, as served), and
batched query/s on the loaded index (all queries in one call: bm25s retrieve with
n_threads=0 for 1 thread, its sequential path, faster than n_threads=1's one-worker pool, and
with n_threads=--threads; tansaku top_k_batch if it exists, else a loop over top_k, as the
output states). rank-bm25 has no batch API: get_scores + argpartition in a
loop, on --rank-bm25-queries sampled queries, extrapolated per query. Every timing takes the
best of --repeat runs after a warm-up on {WARMUP_QUERIES} queries.

Correctness: max |score difference| tansaku vs rank-bm25 get_scores over every document for
{CHECK_QUERIES} sampled queries; top-k overlap tansaku vs bm25s (informational: robertson idf
is 0 where Okapi floors negative idf at epsilon * mean idf, and bm25s omits the constant
(k1 + 1) factor); hit@10 = share of queries whose gold paragraph is in the top 10.

Goals checked in the verdict: tansaku query/s >= {GOAL_VS_BM25S:g}x each bm25s backend (numpy,
its default, and numba when installed; same thread count) and >= {GOAL_VS_RANK:g}x rank-bm25,
single (mmap-loaded index) and batched; PASS only if every check passes.
Also printed: a top-k overlap against bm25s with tansaku at epsilon=0 (robertson's idf floor),
which should be ~1 when bm25s was fed the same tokens (the rest is float32 ties).

--synthetic-docs N also benchmarks a synthetic Japanese corpus of N documents: the JSQuAD
paragraphs are split into sentences on "。", each distinct sentence is tokenised once, and each
synthetic document concatenates 3-6 sentences drawn with a seeded RNG (seed {SEED}), reusing
the cached per-sentence tokens (so generation is fast). Queries are the JSQuAD questions.
rank-bm25 runs on fewer sampled queries there (scaled by corpus size, at least 20) and is
skipped above {RANK_BM25_MAX_DOCS:,} documents.

The layers above the kernel (JSQuAD only, when bm25s's numba backend is installed): one more
process builds a tansaku index of the paragraphs (title and text, ja-surface, BM25 only) and a
bm25s-numba index of the same tokens and times, rows taking turns, best of --repeat: the kernel
on tokens (ours vs bm25s-numba), tokenising alone, the retriever on a raw question
(BM25Retriever.retrieve: tokenise + kernel + hits) vs bm25s-numba on a raw question (the same
ja-surface tokenising, since bm25s.tokenize cannot segment Japanese, + its retrieve), and the
API, tansaku.open(...).search(q, mode="bm25", top_n=k), whose hits' title/text are fetched on
first read (all at once, one SQLite query): unread, and with every hit's text read. Each
query's results are dropped before the next, as a server does. Goals: the retriever within
1.5x the time of tokenise + kernel; the API >= 0.5x bm25s-numba's raw-query rate.
"""


# -- data ------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Tokenised documents and queries (with gold document positions when known)."""

    name: str
    docs: list[list[str]]
    queries: list[list[str]]
    gold: list[int] | None
    tokenise: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # the records and raw questions the layers above the kernel are timed on (JSQuAD only)
    layers_input: tuple[list[dict[str, str]], list[str]] | None = None


def load_jsquad(path: Path) -> tuple[list[str], list[str], list[int]]:
    """Distinct paragraphs ("title text"), all questions and each question's paragraph."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    positions: dict[str, int] = {}
    questions: list[str] = []
    gold: list[int] = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            title, _, text = paragraph["context"].partition("[SEP]")
            context = f"{title.strip()} {text.strip()}".strip()
            pos = positions.setdefault(context, len(positions))
            for qa in paragraph["qas"]:
                questions.append(qa["question"])
                gold.append(pos)
    return list(positions), questions, gold


def sample_positions(total: int, n: int | None, seed: int = SEED) -> list[int]:
    """``n`` sorted positions drawn without replacement from ``range(total)`` (all if n is None)."""
    if n is None or n >= total:
        return list(range(total))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(total, size=n, replace=False).tolist())


def timed_tokenise(
    tokenize: Callable[[str], list[str]], texts: Sequence[str]
) -> tuple[list[list[str]], float]:
    """Token lists of ``texts`` and the seconds it took."""
    start = time.perf_counter()
    tokens = [tokenize(t) for t in texts]
    return tokens, time.perf_counter() - start


def split_sentences(text: str) -> list[str]:
    """Sentences ending in "。" (the last one may lack it); blanks dropped."""
    return [s.strip() for s in re.findall(r"[^。]+。?", text) if s.strip()]


def synthetic_docs(
    paragraphs: Sequence[str], tokenize: Callable[[str], list[str]], n_docs: int, seed: int = SEED
) -> tuple[list[list[str]], float, int]:
    """``n_docs`` documents of 3-6 random sentences; (docs, sentence tokenise s, n sentences)."""
    sentences = list(dict.fromkeys(chain.from_iterable(split_sentences(p) for p in paragraphs)))
    sentence_tokens, seconds = timed_tokenise(tokenize, sentences)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 7, size=n_docs)
    picks = rng.integers(0, len(sentences), size=int(lengths.sum())).tolist()
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    docs = [
        list(chain.from_iterable(sentence_tokens[i] for i in picks[lo:hi]))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return docs, seconds, len(sentences)


# -- token cache shared with the worker subprocesses ------------------------------------------


def _encode(token_lists: Sequence[Sequence[str]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t) for t in token_lists])
    ids = np.fromiter(
        (vocab.setdefault(t, len(vocab)) for toks in token_lists for t in toks),
        dtype=np.int32,
        count=int(offsets[-1]),
    )
    return ids, offsets


def _decode(ids: np.ndarray, offsets: np.ndarray, vocab: np.ndarray) -> list[list[str]]:
    flat = vocab[ids].tolist()
    bounds = offsets.tolist()
    return [flat[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def write_cache(cache: Path, ds: Dataset, spec: dict[str, Any]) -> None:
    """Tokens as int ids + one vocabulary (fast to reload), and the worker's settings."""
    vocab: dict[str, int] = {}
    doc_ids, doc_off = _encode(ds.docs, vocab)
    query_ids, query_off = _encode(ds.queries, vocab)
    np.savez(cache / "tokens.npz", doc_ids=doc_ids, doc_off=doc_off, query_ids=query_ids, query_off=query_off)
    (cache / "vocab.json").write_text(json.dumps(list(vocab), ensure_ascii=False), "utf-8")
    (cache / "spec.json").write_text(json.dumps(spec), "utf-8")


def read_cache(cache: Path) -> tuple[list[list[str]], list[list[str]], dict[str, Any]]:
    """Documents' and queries' token lists and the worker settings written by write_cache."""
    vocab = np.array(json.loads((cache / "vocab.json").read_text("utf-8")), dtype=object)
    arrays = np.load(cache / "tokens.npz")
    docs = _decode(arrays["doc_ids"], arrays["doc_off"], vocab)
    queries = _decode(arrays["query_ids"], arrays["query_off"], vocab)
    return docs, queries, json.loads((cache / "spec.json").read_text("utf-8"))


# -- engines ----------------------------------------------------------------------------------


def top_k_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best scores, best first, ties by position."""
    k = min(k, len(scores))
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def _threads_kwarg(fn: Callable[..., Any]) -> str | None:
    names = ("n_threads", "threads", "num_threads", "workers", "n_jobs")
    params = inspect.signature(fn).parameters
    return next((n for n in names if n in params), None)


def batch_positions(result: Any, n: int) -> list[np.ndarray]:
    """Per-query positions from ``(positions, scores)`` or from a list of such pairs."""
    if isinstance(result, tuple) and len(result) == 2 and len(result[0]) == n and n != 2:
        return [np.asarray(r) for r in result[0]]
    return [np.asarray(r[0]) for r in result]


class TansakuEngine:
    """tansaku.index.bm25.BM25Index (float64 weights, served from an mmap load)."""

    name = "tansaku"

    def __init__(self) -> None:
        from tansaku.index.bm25 import BM25Index, BM25Params

        self.cls, self.params = BM25Index, BM25Params()
        batch = getattr(BM25Index, "top_k_batch", None)
        self.has_batch = batch is not None
        self.threads_kw = _threads_kwarg(batch) if batch is not None else None
        self.batch_note = (
            "top_k_batch" + (f"({self.threads_kw}=...)" if self.threads_kw else "")
            if self.has_batch
            else "loop over top_k (no top_k_batch method)"
        )

    def build(self, docs: list[list[str]]) -> Any:
        return self.cls.build(docs, self.params)

    def save(self, model: Any, directory: str) -> bool:
        model.save(directory)
        return True

    def load(self, directory: str) -> Any:
        return self.cls.load(directory, self.params, mmap=True)

    def search(self, model: Any, query: list[str], k: int) -> np.ndarray:
        return np.asarray(model.top_k(query, k)[0])

    def search_batch(
        self, model: Any, queries: list[list[str]], k: int, threads: int
    ) -> list[np.ndarray] | None:
        if not self.has_batch:
            return [self.search(model, q, k) for q in queries] if threads == 1 else None
        if threads > 1 and self.threads_kw is None:
            return None
        kwargs = {self.threads_kw: threads} if self.threads_kw else {}
        return batch_positions(model.top_k_batch(queries, k, **kwargs), len(queries))


class Bm25sEngine:
    """bm25s.BM25 with a numpy or numba backend, indexed from the same token lists."""

    def __init__(self, backend: str) -> None:
        import bm25s

        self.bm25s, self.backend = bm25s, backend
        self.name = f"bm25s-{backend}"
        self.batch_note = (
            "retrieve(all queries): 1T = n_threads=0 (its sequential map, faster "
            "than n_threads=1's 1-worker pool), otherwise n_threads=T"
        )

    def build(self, docs: list[list[str]]) -> Any:
        model = self.bm25s.BM25(method=BM25S_METHOD, backend=self.backend)
        model.index(docs, show_progress=False)
        return model

    def save(self, model: Any, directory: str) -> bool:
        model.save(directory, show_progress=False)
        return True

    def load(self, directory: str) -> Any:
        return self.bm25s.BM25.load(directory, mmap=True, show_progress=False, backend=self.backend)

    def search(self, model: Any, query: list[str], k: int) -> np.ndarray:
        return model.retrieve([query], k=k, show_progress=False, n_threads=0).documents[0]

    def search_batch(
        self, model: Any, queries: list[list[str]], k: int, threads: int
    ) -> list[np.ndarray] | None:
        n_threads = 0 if threads == 1 else threads
        return list(model.retrieve(queries, k=k, show_progress=False, n_threads=n_threads).documents)


class RankBm25Engine:
    """rank_bm25.BM25Okapi: get_scores + argpartition per query, no save and no batch API."""

    name = "rank-bm25"
    batch_note = "no batch API: the single-query loop"

    def build(self, docs: list[list[str]]) -> Any:
        from rank_bm25 import BM25Okapi

        return BM25Okapi(docs)

    def save(self, model: Any, directory: str) -> bool:
        return False

    def load(self, directory: str) -> Any:
        raise NotImplementedError("rank-bm25 cannot save or load")

    def search(self, model: Any, query: list[str], k: int) -> np.ndarray:
        return top_k_positions(model.get_scores(query), k)

    def search_batch(
        self, model: Any, queries: list[list[str]], k: int, threads: int
    ) -> list[np.ndarray] | None:
        return None


Engine = TansakuEngine | Bm25sEngine | RankBm25Engine


def make_engine(name: str) -> Engine:
    """The adapter for an engine name (imports only that engine's library)."""
    if name == "tansaku":
        return TansakuEngine()
    if name.startswith("bm25s-"):
        return Bm25sEngine(name.removeprefix("bm25s-"))
    if name == "rank-bm25":
        return RankBm25Engine()
    raise ValueError(f"unknown engine {name!r}")


# -- worker: one engine in its own process ----------------------------------------------------


def hit_at(results: Sequence[np.ndarray], gold: Sequence[int] | None, depth: int = 10) -> float | None:
    """Share of queries whose gold position is in the first ``depth`` results."""
    if not gold:
        return None
    return float(np.mean([g in r[:depth].tolist() for r, g in zip(results, gold, strict=True)]))


def time_queries(
    fn: Callable[[list[list[str]]], Any], queries: list[list[str]], repeat: int
) -> tuple[float | None, Any]:
    """Queries/s of ``fn(queries)`` (best of ``repeat`` after a warm-up) and its last result."""
    seconds, result = best_time(lambda: fn(queries), repeat, warmup=lambda: fn(queries[:WARMUP_QUERIES]))
    return (None if result is None else len(queries) / seconds), result


def run_worker(engine_name: str, cache: Path) -> dict[str, Any]:
    """Build, save, load and query one engine; everything it measured, JSON-ready."""
    if engine_name == "layers":
        spec = json.loads((cache / "spec.json").read_text("utf-8"))
        return run_layers(cache, spec["k"], spec["repeat"])
    engine = make_engine(engine_name)
    docs, queries, spec = read_cache(cache)
    k, repeat, threads = spec["k"], spec["repeat"], spec["threads"]
    gold = spec["gold"]
    if engine_name == "rank-bm25":
        queries = [queries[i] for i in spec["rank_queries"]]
        gold = [gold[i] for i in spec["rank_queries"]] if gold else None
    out: dict[str, Any] = {
        "engine": engine_name,
        "queries": len(queries),
        "batch_note": engine.batch_note,
        "base_rss_mb": peak_rss_mb(),
    }
    out["index_s"], model = best_time(lambda: engine.build(docs), repeat)

    def single(m: Any) -> Callable[[list[list[str]]], list[np.ndarray]]:
        return lambda qs: [engine.search(m, q, k) for q in qs]

    with tempfile.TemporaryDirectory(prefix="bench_bm25_") as tmp:
        out["size_mb"] = out["load_s"] = None
        if engine.save(model, tmp):
            out["size_mb"] = dir_size_mb(tmp)
            out["single_qps_built"], _ = time_queries(single(model), queries, repeat)
            model = None
            out["load_s"], model = best_time(
                lambda: engine.load(tmp), repeat, warmup=lambda: engine.load(tmp)
            )
        out["single_qps"], results = time_queries(single(model), queries, repeat)
        out["hit10"] = hit_at(results, gold)
        for t in sorted({1, threads}):
            out[f"batch_qps_{t}"], _ = time_queries(
                lambda qs, t=t: engine.search_batch(model, qs, k, t), queries, repeat
            )
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_subprocess(engine_name: str, cache: Path, threads: int) -> dict[str, Any]:
    """run_worker in a fresh interpreter, so engines do not share memory or imports."""
    print(f"  [{engine_name}] running ...", file=sys.stderr, flush=True)
    env = dict(
        os.environ,
        DISABLE_TQDM="1",
        TQDM_DISABLE="1",
        NUMBA_NUM_THREADS=str(max(threads, os.cpu_count() or 1)),
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine_name, "--cache", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  [{engine_name}] FAILED: {tail}", file=sys.stderr)
        return {"engine": engine_name, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- correctness (in the parent process) ------------------------------------------------------


def mean_overlap(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray], depth: int) -> float:
    """Mean share of our top ``depth`` (queries with any match) also in their top ``depth``."""
    shares = [
        len(set(a[:depth].tolist()) & set(b[:depth].tolist())) / len(a[:depth])
        for a, b in zip(ours, theirs, strict=True)
        if len(a)
    ]
    return float(np.mean(shares)) if shares else float("nan")


def correctness(ds: Dataset, k: int, n_check: int, with_rank: bool) -> dict[str, Any]:
    """Score agreement with rank-bm25, overlap with bm25s, top_k_batch == top_k."""
    import bm25s

    from tansaku.index.bm25 import BM25Index, BM25Params

    index = BM25Index.build(ds.docs, BM25Params())
    sample = [ds.queries[i] for i in sample_positions(len(ds.queries), n_check, SEED + 1)]
    df = np.diff(index.indptr)
    out: dict[str, Any] = {
        "check_queries": len(sample),
        "max_score_diff": None,
        "negative_idf_terms": int((df > index.n_docs / 2).sum()),
    }
    if with_rank:
        from rank_bm25 import BM25Okapi

        rank = BM25Okapi(ds.docs)
        diffs = [np.abs(index.get_scores(q) - rank.get_scores(q)).max() for q in sample]
        out["max_score_diff"] = float(max(diffs))
        out["max_score"] = float(max(index.get_scores(q).max() for q in sample))
    model = bm25s.BM25(method=BM25S_METHOD)
    model.index(ds.docs, show_progress=False)
    theirs = model.retrieve(ds.queries, k=min(k, index.n_docs), show_progress=False, n_threads=0).documents
    # epsilon=0 floors negative idf at 0 exactly like robertson: this overlap checks the feeding.
    for name, idx in (("", index), ("_eps0", BM25Index.build(ds.docs, BM25Params(epsilon=0.0)))):
        ours = [np.asarray(idx.top_k(q, k)[0]) for q in ds.queries]
        for depth in (10, k):
            out[f"overlap_bm25s{name}_{depth}"] = mean_overlap(ours, theirs, depth)
    if hasattr(index, "top_k_batch"):
        batched = batch_positions(index.top_k_batch(sample, k), len(sample))
        singles = [np.asarray(index.top_k(q, k)[0]) for q in sample]
        out["batch_matches_top_k"] = all(np.array_equal(a, b) for a, b in zip(batched, singles, strict=True))
    return out


# -- one corpus: all engines ------------------------------------------------------------------


def engine_names(n_docs: int) -> tuple[list[str], list[str]]:
    """Engines to run on a corpus of ``n_docs`` documents, and notes on any left out."""
    names, notes = ["tansaku", "bm25s-numpy"], []
    if importlib.util.find_spec("numba") is not None:
        names.append("bm25s-numba")
    else:
        notes.append("bm25s numba backend skipped: numba is not installed")
    if n_docs <= RANK_BM25_MAX_DOCS:
        names.append("rank-bm25")
    else:
        notes.append(
            f"rank-bm25 skipped above {RANK_BM25_MAX_DOCS:,} docs "
            "(its get_scores is O(N) Python per query term)"
        )
    return names, notes


def bench_corpus(ds: Dataset, args: argparse.Namespace, n_rank: int) -> dict[str, Any]:
    """Every engine on one corpus (each in its own subprocess) plus the correctness checks."""
    print(f"{ds.name}: {len(ds.docs):,} docs, {len(ds.queries):,} queries", file=sys.stderr)
    names, notes = engine_names(len(ds.docs))
    rank_queries = sample_positions(len(ds.queries), n_rank)
    spec = {
        "k": args.k,
        "repeat": args.repeat,
        "threads": args.threads,
        "gold": ds.gold,
        "rank_queries": rank_queries,
    }
    with tempfile.TemporaryDirectory(prefix="bench_bm25_cache_") as cache:
        write_cache(Path(cache), ds, spec)
        rows = [run_subprocess(name, Path(cache), args.threads) for name in names]
        layers = None
        if ds.layers_input is not None and "bm25s-numba" in names:
            write_input(Path(cache), *ds.layers_input)
            layers = run_subprocess("layers", Path(cache), args.threads)
    print("  [check] correctness ...", file=sys.stderr, flush=True)
    n_check = CHECK_QUERIES if ds.gold is not None else min(CHECK_QUERIES, n_rank)
    check = correctness(ds, args.k, n_check, "rank-bm25" in names)
    return {
        "dataset": ds.name,
        "docs": len(ds.docs),
        "queries": len(ds.queries),
        "tokens": sum(map(len, ds.docs)),
        "tokenise_s": ds.tokenise,
        "notes": ds.notes + notes,
        "rows": rows,
        "check": check,
        "layers": layers,
    }


# -- report -----------------------------------------------------------------------------------


def row_by(run: dict[str, Any], engine: str) -> dict[str, Any] | None:
    return next((r for r in run["rows"] if r["engine"] == engine and "error" not in r), None)


def batch_qps(row: dict[str, Any], threads: int) -> float | None:
    """Batched q/s at ``threads``; rank-bm25's batch is its single-query loop."""
    if row["engine"] == "rank-bm25":
        return row.get("single_qps")
    return row.get(f"batch_qps_{threads}")


def results_table(run: dict[str, Any], threads: int) -> str:
    headers = [
        "engine",
        "index s",
        "size MB",
        "load s",
        "single q/s",
        "single built",
        "batch q/s 1T",
        f"batch q/s {threads}T",
        "peak RSS MB",
        "base RSS MB",
        "hit@10",
    ]
    rows = []
    for r in run["rows"]:
        if "error" in r:
            rows.append([r["engine"], f"error: {r['error']}"[:60], *[""] * (len(headers) - 2)])
            continue
        cells = [
            r["index_s"],
            r["size_mb"],
            r["load_s"],
            r["single_qps"],
            r.get("single_qps_built") or r["single_qps"],
            batch_qps(r, 1),
            batch_qps(r, threads) if threads > 1 else None,
            r["peak_rss_mb"],
            r["base_rss_mb"],
            r["hit10"],
        ]
        rows.append([r["engine"], *(fmt_num(c) for c in cells)])
    return format_table(headers, rows)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def goal_checks(run: dict[str, Any], threads: int) -> list[tuple[str, float | None, float]]:
    """(label, tansaku/other ratio, goal) for single and batched q/s."""
    ours = row_by(run, "tansaku")
    if ours is None:
        return []
    others = [
        (r, GOAL_VS_RANK if r["engine"] == "rank-bm25" else GOAL_VS_BM25S)
        for r in run["rows"]
        if r["engine"] != "tansaku" and "error" not in r
    ]
    checks: list[tuple[str, float | None, float]] = []
    modes: list[tuple[str, Callable[[dict[str, Any]], float | None]]] = [
        ("single", lambda r: r.get("single_qps")),
        ("batched 1T", lambda r: batch_qps(r, 1)),
    ]
    if threads > 1 and batch_qps(ours, threads):
        modes.append((f"batched {threads}T", lambda r: batch_qps(r, threads)))
    for mode, key in modes:
        checks += [(f"{mode} vs {r['engine']}", ratio(key(ours), key(r)), goal) for r, goal in others]
    return checks


def ratio_lines(run: dict[str, Any], threads: int) -> list[str]:
    ours = row_by(run, "tansaku")
    if ours is None:
        return ["tansaku failed: no ratios"]
    lines = []
    for r in run["rows"]:
        if r["engine"] == "tansaku" or "error" in r:
            continue
        built = ratio(ours.get("single_qps_built"), r.get("single_qps_built") or r.get("single_qps"))
        parts = [
            f"single {fmt_num(ratio(ours['single_qps'], r['single_qps']))}x",
            f"single built {fmt_num(built)}x",
            f"batched 1T {fmt_num(ratio(batch_qps(ours, 1), batch_qps(r, 1)))}x",
        ]
        if threads > 1:
            best_ours = max(batch_qps(ours, 1) or 0, batch_qps(ours, threads) or 0)
            parts.append(
                f"tansaku best batch / its {threads}T {fmt_num(ratio(best_ours, batch_qps(r, threads)))}x"
            )
        lines.append(f"tansaku / {r['engine']}: " + ", ".join(parts))
    return lines


def check_lines(run: dict[str, Any], k: int) -> list[str]:
    c = run["check"]
    lines = []
    if c["max_score_diff"] is not None:
        lines.append(
            f"max |score diff| tansaku vs rank-bm25 get_scores: {c['max_score_diff']:.3g} "
            f"({c['check_queries']} queries x {run['docs']:,} docs; "
            f"max score {c['max_score']:.3g})"
        )
    lines.append(
        f'top-10 / top-{k} overlap tansaku vs bm25s(method="{BM25S_METHOD}"): '
        f"{c['overlap_bm25s_10']:.3f} / {c[f'overlap_bm25s_{k}']:.3f}, "
        f"mean over {run['queries']:,} queries "
        f"({c['negative_idf_terms']} terms have df > N/2, where robertson idf = 0 "
        "but Okapi uses epsilon * mean idf)"
    )
    lines.append(
        f"same overlap with tansaku at epsilon=0 (robertson's idf floor): "
        f"{c['overlap_bm25s_eps0_10']:.3f} / {c[f'overlap_bm25s_eps0_{k}']:.3f} "
        "(checks that bm25s got the same tokens; the rest is float32 ties)"
    )
    if "batch_matches_top_k" in c:
        lines.append(f"top_k_batch == top_k on {c['check_queries']} queries: {c['batch_matches_top_k']}")
    return lines


def note_lines(run: dict[str, Any]) -> list[str]:
    notes = list(run["notes"])
    for r in run["rows"]:
        if "error" in r:
            continue
        notes.append(f"{r['engine']} batched: {r['batch_note']}")
    rank = row_by(run, "rank-bm25")
    if rank is not None:
        notes.append(
            f"rank-bm25 q/s measured on {rank['queries']} sampled queries and "
            "extrapolated per query; it has no save/load"
        )
    notes.append(
        "single q/s = on the mmap-loaded index; single built = on the freshly built "
        "one; base RSS = after imports + loading the shared tokens (peak includes it)"
    )
    return notes


def verdict(run: dict[str, Any], threads: int) -> str:
    checks = goal_checks(run, threads)
    if not checks:
        return "VERDICT: MISS (tansaku did not run)"
    parts = [
        f"{label} {fmt_num(r)}x (goal >= {goal:g}x) {'PASS' if r and r >= goal else 'MISS'}"
        for label, r, goal in checks
    ]
    ok = all(r is not None and r >= goal for _, r, goal in checks)
    return f"VERDICT: {'PASS' if ok else 'MISS'}: " + "; ".join(parts)


def print_report(run: dict[str, Any], args: argparse.Namespace) -> None:
    tok = run["tokenise_s"]
    print(
        f"\n== {run['dataset']}: {run['docs']:,} docs ({run['tokens']:,} tokens), "
        f"{run['queries']:,} queries, k={args.k}, best of {args.repeat}, "
        f"{args.threads} threads =="
    )
    print(
        "tokenise (ja-surface analyzer, once, shared by all engines): "
        + ", ".join(f"{name} {s:.2f} s" for name, s in tok.items())
    )
    print(results_table(run, args.threads))
    for line in [*note_lines(run), *ratio_lines(run, args.threads), *check_lines(run, args.k)]:
        print(f"- {line}")
    print(verdict(run, args.threads))
    layers = run.get("layers")
    if layers is not None:
        lines = [f"layers above the kernel failed: {layers['error']}"] if "error" in layers else None
        print("\n".join(lines or report_lines(layers, args.k, args.repeat)))


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--jsquad",
        type=Path,
        default=DEFAULT_JSQUAD,
        help="JSQuAD valid JSON (default: ../shared/data/jsquad/valid-v1.3.json relative to the repo root)",
    )
    p.add_argument("--queries", type=int, help="benchmark N sampled questions (default: all)")
    p.add_argument("--repeat", type=int, help="timed runs per measurement, best kept (default 3)")
    p.add_argument(
        "--rank-bm25-queries",
        type=int,
        help="queries rank-bm25 is timed on, extrapolated per query (default 300)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for the multi-threaded batched rows (default: all cores)",
    )
    p.add_argument("--k", type=int, default=100, help="results per query (default 100)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="500 queries, repeat 1, 100 rank-bm25 queries (explicit options win)",
    )
    p.add_argument("--json", action="store_true", help="also print all results as JSON")
    p.add_argument(
        "--synthetic-docs",
        type=int,
        metavar="N",
        help="also benchmark a synthetic corpus of N docs (see above)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.worker and not args.jsquad.is_file():
        p.error(f"JSQuAD file not found: {args.jsquad} (pass --jsquad PATH to valid-v1.3.json)")
    return args


def jsquad_dataset(
    paragraphs: list[str],
    questions: list[str],
    gold: list[int],
    tokenize: Callable[[str], list[str]],
    n_queries: int | None,
    records: list[dict[str, str]] | None = None,
) -> Dataset:
    picked = sample_positions(len(questions), n_queries)
    docs, doc_s = timed_tokenise(tokenize, paragraphs)
    queries, query_s = timed_tokenise(tokenize, [questions[i] for i in picked])
    return Dataset(
        "JSQuAD valid v1.3",
        docs,
        queries,
        [gold[i] for i in picked],
        {"docs": doc_s, "queries": query_s},
        layers_input=None if records is None else (records, [questions[i] for i in picked]),
    )


def synthetic_dataset(
    paragraphs: list[str], base: Dataset, tokenize: Callable[[str], list[str]], n_docs: int
) -> Dataset:
    docs, sentence_s, n_sentences = synthetic_docs(paragraphs, tokenize, n_docs)
    note = (
        f"synthetic: 3-6 of {n_sentences:,} JSQuAD sentences per doc (seed {SEED}); "
        "queries = the JSQuAD questions; no gold, so hit@10 is n/a"
    )
    return Dataset(
        f"synthetic ({n_docs:,} docs)",
        docs,
        base.queries,
        None,
        {"sentences": sentence_s, "queries": base.tokenise["queries"]},
        [note],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.cache)))
        return 0
    from tansaku.index.analyzer import get_analyzer

    started = time.perf_counter()
    tokenize = get_analyzer("ja-surface").tokenize  # plain MeCab surface forms, as published
    paragraphs, questions, gold = load_jsquad(args.jsquad)
    base = jsquad_dataset(paragraphs, questions, gold, tokenize, args.queries, jsquad_records(args.jsquad))
    runs = [bench_corpus(base, args, args.rank_bm25_queries)]
    if args.synthetic_docs:
        synth = synthetic_dataset(paragraphs, base, tokenize, args.synthetic_docs)
        n_rank = max(20, args.rank_bm25_queries * len(base.docs) // args.synthetic_docs)
        runs.append(bench_corpus(synth, args, min(n_rank, args.rank_bm25_queries)))
    for run in runs:
        print_report(run, args)
    print(f"\nwall time {time.perf_counter() - started:.1f} s")
    if args.json:
        print(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs},
                indent=2,
                ensure_ascii=False,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
