#!/usr/bin/env python3
"""Bounded load test of ``tansaku serve``'s rerank endpoint over loopback (run with --help)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _bench_common import fmt_num, format_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSQUAD = REPO.parent / "shared" / "data" / "jsquad" / "valid-v1.3.json"
DEFAULT_CONCURRENCY = (1, 8, 32)
QUICK = {"requests": 40, "duration": 10.0}
DEFAULTS = {"requests": 200, "duration": 60.0}
WARMUP_REQUESTS = 3
REQUEST_TIMEOUT_S = 120.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
GRACE = 0.5  # requests still running this fraction of --duration past it are abandoned

DESCRIPTION = """\
Load-test the rerank endpoint of `tansaku serve` over loopback and print, per number of
concurrent clients, the requests/s, the p50/p99 latency and the error count.

Each request is one query and --documents Japanese documents: a JSQuAD question with its
own paragraph and the following ones (from --jsquad when the file exists, else built-in
sentences). Without --url the server is started in this process (uvicorn on a free
127.0.0.1 port, on a background thread; the clients share this process, as an
in-process benchmark must) with --reranker DIR, or, without one, a tiny random BERT
cross-encoder built on the spot (the test suite's model: it measures the server's own
HTTP, queueing and tokenization overhead, not a real model's speed). Torch threads are
limited as `tansaku serve` does ((CPUs - 1) / --workers-threads, at least 1).

Bounded: each concurrency level stops sending after --requests requests or --duration
seconds, whichever comes first; requests still unanswered 50% past --duration are
abandoned and counted as errors (and the server is given up to --duration to drain them
before the next level). A few untimed warm-up requests come first. --quick: at most
40 requests / 10 s per level.
Nothing leaves this machine: the server binds 127.0.0.1 and --url must be loopback."""

EPILOG = """\
examples:
  python scripts/bench_server.py --quick
  python scripts/bench_server.py --reranker /models/japanese-reranker-xsmall --requests 300
  python scripts/bench_server.py --url http://127.0.0.1:8080 --api-key "$TANSAKU_API_KEY" \\
      --model japanese-reranker-xsmall --concurrency 1,4,16
"""

FALLBACK_QUERY = "富士山の高さは何メートルか。"
FALLBACK_DOCUMENTS = (
    "富士山は日本で一番高い山で、高さは三千七百七十六メートルです。山梨県と静岡県にまたがっています。",
    "東京は日本の首都であり、世界でも有数の大都市です。人口はおよそ千四百万人です。",
    "京都には古い寺や神社が多く、毎年たくさんの観光客が訪れます。",
    "検索エンジンは利用者の質問に合う文書を探し、関連度の高い順に並べて表示します。",
    "新幹線は東京と大阪を約二時間半で結ぶ高速鉄道です。",
)


@dataclass
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0

    def row(self) -> list[str]:
        import numpy as np

        done = len(self.latencies)
        lat = np.asarray(self.latencies) * 1000 if done else np.asarray([float("nan")])
        return [
            str(self.concurrency),
            str(done + self.errors),
            str(self.errors),
            fmt_num(done / self.seconds if self.seconds else None),
            fmt_num(float(np.percentile(lat, 50))),
            fmt_num(float(np.percentile(lat, 99))),
            fmt_num(float(lat.mean())),
        ]


# -- workload ------------------------------------------------------------------------------------


def workload(jsquad: Path, n_documents: int) -> tuple[str, list[str]]:
    """A JSQuAD question and ``n_documents`` paragraphs (its own first), else built-in text."""
    if jsquad.exists():
        data = json.loads(jsquad.read_text(encoding="utf-8"))
        paragraphs = [p for article in data["data"] for p in article["paragraphs"]]
        query = paragraphs[0]["qas"][0]["question"]
        # contexts are "title [SEP] text"; rerankers read "title text" in tansaku
        docs = [p["context"].replace(" [SEP] ", " ") for p in paragraphs[:n_documents]]
        return query, docs
    docs = [FALLBACK_DOCUMENTS[i % len(FALLBACK_DOCUMENTS)] for i in range(n_documents)]
    return FALLBACK_QUERY, docs


# -- in-process server ---------------------------------------------------------------------------


def tiny_reranker_dir(directory: Path) -> Path:
    """Build the test suite's tiny random BERT cross-encoder into ``directory``."""
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures_models import bert_classifier, bert_tokenizer, save_model

    tokenizer = bert_tokenizer(directory)
    return save_model(bert_classifier(len(tokenizer)), tokenizer, directory)


class InProcessServer:
    """uvicorn serving a rerank-only app on a free loopback port, on a daemon thread."""

    def __init__(
        self, reranker_dir: Path, *, max_length: int, workers: int, model: str, torch_threads: int | None
    ) -> None:
        import uvicorn

        from tansaku.pipeline.serve import create_app, limit_torch_threads, uvicorn_config
        from tansaku.rerank import CrossEncoderReranker

        self.torch_threads = limit_torch_threads(workers, torch_threads)
        reranker = CrossEncoderReranker(reranker_dir, max_length=max_length)
        app = create_app(None, reranker, model_name=model, worker_threads=workers, max_queue=256)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # as tansaku serve runs it: uvicorn's h11 protocol with the connection limits
        self._server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> InProcessServer:
        import httpx

        self._thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("the in-process server did not start within 30 s")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


# -- load generation -----------------------------------------------------------------------------


async def run_level(
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    *,
    concurrency: int,
    requests: int,
    duration: float,
) -> LevelResult:
    """``concurrency`` clients send requests until ``requests`` were sent or ``duration`` passed."""
    import httpx

    result = LevelResult(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sent = 0
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S, headers=headers) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def client_loop() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1  # single-threaded event loop: no lock needed
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, json=payload)
                    ok = response.status_code == 200
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if problem is None:
                    result.latencies.append(time.perf_counter() - t0)
                else:
                    result.errors += 1
                    result.first_error = result.first_error or problem

        clients = asyncio.gather(*(client_loop() for _ in range(concurrency)))
        try:
            # requests still running well after the level's time limit are abandoned
            await asyncio.wait_for(clients, timeout=duration * (1 + GRACE))
        except asyncio.TimeoutError:
            unfinished = sent - len(result.latencies) - result.errors
            result.errors += unfinished
            result.first_error = result.first_error or (
                f"{unfinished} request(s) unfinished {GRACE:.0%} past --duration"
            )
        result.seconds = time.perf_counter() - start
    return result


async def wait_until_idle(base_url: str, limit_s: float) -> None:
    """Let abandoned requests drain, so they do not slow the next level (bounded wait)."""
    import httpx

    deadline = time.perf_counter() + limit_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.perf_counter() < deadline:
            try:
                if (await client.get(base_url + "/health")).json().get("in_flight", 0) == 0:
                    return
            except (httpx.HTTPError, ValueError):
                return  # not a tansaku server, or no health endpoint: nothing to wait for
            await asyncio.sleep(0.1)


def bench(
    base_url: str,
    path: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    levels: Sequence[int],
    requests: int,
    duration: float,
) -> list[LevelResult]:
    """Warm up, then run every concurrency level in turn."""
    url = base_url + path
    asyncio.run(run_level(url, payload, headers, concurrency=1, requests=WARMUP_REQUESTS, duration=duration))
    results = []
    for level in levels:
        results.append(
            asyncio.run(
                run_level(url, payload, headers, concurrency=level, requests=requests, duration=duration)
            )
        )
        if results[-1].errors:
            asyncio.run(wait_until_idle(base_url, limit_s=duration))
    return results


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="benchmark a running server (loopback) instead of starting one")
    p.add_argument(
        "--reranker",
        type=Path,
        help="model directory for the in-process server (default: a tiny random "
        "BERT cross-encoder built in a temporary directory)",
    )
    p.add_argument(
        "--model",
        default="bench-reranker",
        help="model name sent in requests (and given to the in-process server)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TANSAKU_API_KEY"),
        help="Bearer key for --url (default: $TANSAKU_API_KEY)",
    )
    p.add_argument("--path", default="/v1/rerank", help="endpoint (default: /v1/rerank)")
    p.add_argument("--documents", type=int, default=20, help="documents per request (default: 20)")
    p.add_argument(
        "--jsquad",
        type=Path,
        default=DEFAULT_JSQUAD,
        help="JSQuAD file for the query and documents (default: ../shared/...)",
    )
    p.add_argument(
        "--concurrency",
        default=",".join(map(str, DEFAULT_CONCURRENCY)),
        help="comma-separated concurrent clients per level (default: 1,8,32)",
    )
    p.add_argument(
        "--requests",
        type=int,
        help=f"requests per level at most (default: {DEFAULTS['requests']}, --quick {QUICK['requests']})",
    )
    p.add_argument(
        "--duration",
        type=float,
        help=f"seconds per level at most (default: {DEFAULTS['duration']:.0f}, "
        f"--quick {QUICK['duration']:.0f})",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="reranker max tokens per pair, in-process server (default: 512)",
    )
    p.add_argument(
        "--workers-threads",
        type=int,
        default=1,
        help="inference threads of the in-process server (default: 1)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        help="torch threads of the in-process server (default: as tansaku serve, "
        "(CPUs - 1) / --workers-threads, at least 1)",
    )
    p.add_argument("--quick", action="store_true", help="small bounds: finishes within a minute")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    args.requests = args.requests or int(preset["requests"])
    args.duration = args.duration or float(preset["duration"])
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if min([args.requests, args.documents, args.duration, *args.levels]) <= 0:
        p.error("--requests, --documents, --duration and --concurrency must be positive")
    if args.url and urlsplit(args.url).hostname not in LOOPBACK_HOSTS:
        p.error(
            f"--url must be a loopback address ({', '.join(sorted(LOOPBACK_HOSTS))}): a "
            "load test is not to be pointed at other machines"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    query, docs = workload(args.jsquad, args.documents)
    payload = {"model": args.model, "query": query, "documents": docs}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key and args.url else {}
    setup = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        if args.url:
            results = bench(
                args.url.rstrip("/"), args.path, payload, headers, args.levels, args.requests, args.duration
            )
            where = args.url
        else:
            model_dir = args.reranker or tiny_reranker_dir(Path(tmp) / "tiny-reranker")
            with InProcessServer(
                model_dir,
                max_length=args.max_length,
                workers=args.workers_threads,
                model=args.model,
                torch_threads=args.torch_threads,
            ) as server:
                print(
                    f"in-process server {server.url}: reranker {model_dir}, max_length "
                    f"{args.max_length}, {args.workers_threads} inference thread(s) x "
                    f"{server.torch_threads} torch thread(s), started in "
                    f"{time.perf_counter() - setup:.1f} s",
                    file=sys.stderr,
                )
                results = bench(
                    server.url, args.path, payload, headers, args.levels, args.requests, args.duration
                )
            where = "in-process"
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "concurrency": r.concurrency,
                        "ok": len(r.latencies),
                        "errors": r.errors,
                        "seconds": r.seconds,
                        "latencies_s": r.latencies,
                    }
                    for r in results
                ]
            )
        )
        return 0
    print(
        f"rerank load test ({where}, {args.path}): 1 query x {len(docs)} documents "
        f"({sum(map(len, docs)) / len(docs):.0f} chars on average) per request; at most "
        f"{args.requests} requests / {args.duration:.0f} s per level; {os.cpu_count()} CPUs"
    )
    print(
        format_table(
            ["clients", "requests", "errors", "req/s", "p50 ms", "p99 ms", "mean ms"],
            [r.row() for r in results],
        )
    )
    for r in results:
        if r.first_error:
            print(f"clients={r.concurrency}: first error: {r.first_error}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
