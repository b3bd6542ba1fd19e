#!/usr/bin/env python3
"""Soak test of `tansaku serve`: mixed traffic with concurrent index updates (run with --help)."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _bench_common import format_table

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, never configurable: the soak must not leave this machine
QUICK = {"requests": 300, "max_seconds": 90.0}
DEFAULTS = {"requests": 3000, "max_seconds": 600.0}
RESERVED = 8  # sample documents the updater deletes and adds back, over and over
REQUEST_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0

DESCRIPTION = """\
Soak `tansaku serve` with mixed traffic while the index it serves is updated underneath it,
and report the requests served, the errors (goal: 0) and the server's memory growth.

The script builds an index from the shipped 56-document sample corpus (BM25 only, or
--encoder), starts the real `tansaku serve` in a subprocess on a free 127.0.0.1 port (with
--reranker DIR, or a tiny random BERT cross-encoder built on the spot: the soak measures
reliability, not model quality), and runs --concurrency client threads sending a mix of
/v1/search (50 %), /v1/rerank (40 %, 2-20 sample documents) and /health (10 %). Meanwhile
an updater thread alternately deletes and re-adds 8 documents through tansaku's own
update API every --update-every seconds, so the server's searcher keeps switching versions.

Every answer is checked, not just its status: search hits must come from the corpus and be
ranked 1..n with non-increasing scores; rerank results must be a permutation of the request
with scores in [0, 1], sorted descending. Anything else counts as an error.
Memory: the server's resident set (VmRSS) after the first 10 % of requests (warm) and at the
end; growth is the difference.

Bounded: stops after --requests requests or --max-seconds, whichever comes first, then stops
the server (SIGTERM). --quick: 300 requests / 90 s. Exit status 1 if any request failed."""


@dataclass
class Tally:
    """Counts shared by the client threads (guarded by ``lock``)."""

    sent: int = 0
    ok: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, limit: int) -> bool:
        with self.lock:
            if self.sent >= limit:
                return False
            self.sent += 1
            return True

    def record(self, kind: str, problem: str | None) -> None:
        with self.lock:
            if problem is None:
                self.ok[kind] += 1
            else:
                self.errors[kind] += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{kind}: {problem}")


@dataclass(frozen=True)
class Report:
    requests: int
    served: dict[str, int]
    errors: dict[str, int]
    error_examples: list[str]
    updates: int
    update_errors: int
    seconds: float
    requests_per_s: float
    rss_warm_mb: float
    rss_end_mb: float
    rss_growth_mb: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def check_search(body: dict[str, Any], known: set[str]) -> str | None:
    hits = body.get("hits")
    if not isinstance(hits, list):
        return "no hits list"
    if [h["rank"] for h in hits] != list(range(1, len(hits) + 1)):
        return "ranks are not 1..n"
    scores = [h["score"] for h in hits]
    if any(a < b for a, b in zip(scores, scores[1:], strict=False)):
        return "scores not sorted"
    unknown = {h["id"] for h in hits} - known
    return f"unknown ids {sorted(unknown)}" if unknown else None


def check_rerank(body: dict[str, Any], n_docs: int, top_n: int) -> str | None:
    results = body.get("results")
    if not isinstance(results, list) or len(results) != min(top_n, n_docs):
        return f"expected {min(top_n, n_docs)} results"
    indexes = [r["index"] for r in results]
    scores = [r["relevance_score"] for r in results]
    if len(set(indexes)) != len(indexes) or not all(0 <= i < n_docs for i in indexes):
        return "indexes are not distinct request positions"
    if not all(0.0 <= s <= 1.0 for s in scores):
        return "score outside [0, 1]"
    if any(a < b for a, b in zip(scores, scores[1:], strict=False)):
        return "scores not sorted"
    return None


def client(
    url: str,
    tally: Tally,
    limit: int,
    deadline: float,
    seed: int,
    texts: list[str],
    queries: list[str],
    known: set[str],
    reranking: bool,
) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        while time.monotonic() < deadline and tally.take(limit):
            roll = rng.random()
            query = rng.choice(queries)
            try:
                if roll < 0.5 or not reranking and roll < 0.9:
                    kind = "search"
                    res = http.post("/v1/search", json={"query": query, "top_n": 10})
                    problem = (
                        check_search(res.json(), known)
                        if res.status_code == 200
                        else f"HTTP {res.status_code}: {res.text[:200]}"
                    )
                elif roll < 0.9:
                    kind = "rerank"
                    docs = rng.sample(texts, rng.randint(2, 20))
                    top_n = rng.randint(1, 25)
                    res = http.post("/v1/rerank", json={"query": query, "documents": docs, "top_n": top_n})
                    problem = (
                        check_rerank(res.json(), len(docs), top_n)
                        if res.status_code == 200
                        else f"HTTP {res.status_code}: {res.text[:200]}"
                    )
                else:
                    kind = "health"
                    res = http.get("/health")
                    problem = None if res.status_code == 200 else f"HTTP {res.status_code}"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                kind, problem = "transport", f"{type(exc).__name__}: {exc}"
            tally.record(kind, problem)


def updater(
    index_dir: Path, rows: list[dict[str, Any]], every: float, stop: threading.Event, counts: Counter[str]
) -> None:
    from tansaku.index import read_dicts
    from tansaku.index.update import update_index

    reserved = rows[-RESERVED:]
    present = True
    while not stop.wait(every):
        try:
            if present:
                update_index(index_dir, (), [r["id"] for r in reserved], progress=False)
            else:
                update_index(index_dir, read_dicts(reserved), progress=False)
            present = not present
            counts["updates"] += 1
        except Exception as exc:  # noqa: BLE001 - reported, the soak goes on
            counts["update_errors"] += 1
            print(f"soak: update failed: {exc}", file=sys.stderr)


def start_server(index_dir: Path, reranker: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "tansaku.pipeline.cli",
        "serve",
        str(index_dir),
        "--reranker",
        reranker,
        "--host",
        HOST,
        "--port",
        str(port),
        "--max-length",
        "256",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {START_TIMEOUT_S:.0f} s")


def soak(args: argparse.Namespace, work: Path) -> Report:
    from tansaku.index import SAMPLE_CORPUS, BuildConfig, build_index, read_dicts

    rows = [json.loads(line) for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()]
    texts = [f"{r.get('title', '')} {r['text']}".strip() for r in rows]
    queries = [r.get("title") or r["text"][:20] for r in rows] + ["東京の人口", "検索エンジン", "mountain"]
    known = {r["id"] for r in rows}
    index_dir = work / "index"
    build_index(index_dir, read_dicts(rows), BuildConfig(encoder=args.encoder), progress=False).close()
    if args.reranker == "none":
        reranker = "none"
    elif args.reranker:
        reranker = args.reranker
    else:
        sys.path.insert(0, str(REPO / "scripts"))
        from bench_server import tiny_reranker_dir

        reranker = str(tiny_reranker_dir(work / "tiny-reranker"))
    port = free_port()
    url = f"http://{HOST}:{port}"
    log = work / "server.log"
    proc = start_server(index_dir, reranker, port, log)
    tally = Tally()
    counts: Counter[str] = Counter()
    stop = threading.Event()
    try:
        wait_healthy(url, proc, log)
        print(
            f"soak: server pid {proc.pid} on {url}; {args.requests} requests, "
            f"{args.concurrency} clients, updates every {args.update_every} s",
            file=sys.stderr,
        )
        start = time.monotonic()
        deadline = start + args.max_seconds
        warm_at = max(1, args.requests // 10)
        update_thread = threading.Thread(
            target=updater, daemon=True, args=(index_dir, rows, args.update_every, stop, counts)
        )
        threads = [
            threading.Thread(
                target=client,
                daemon=True,
                args=(
                    url,
                    tally,
                    args.requests,
                    deadline,
                    args.seed + i,
                    texts,
                    queries,
                    known,
                    reranker != "none",
                ),
            )
            for i in range(args.concurrency)
        ]
        update_thread.start()
        for t in threads:
            t.start()
        rss_warm = float("nan")
        while any(t.is_alive() for t in threads):
            if rss_warm != rss_warm and tally.sent >= warm_at:  # NaN until measured
                rss_warm = rss_mb(proc.pid)
            time.sleep(0.05)
        seconds = time.monotonic() - start
        rss_end = rss_mb(proc.pid)
        stop.set()
        update_thread.join(timeout=120)
        if proc.poll() is not None:
            tally.record("server", f"the server died ({proc.returncode})")
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    done = sum(tally.ok.values()) + sum(tally.errors.values())
    return Report(
        requests=done,
        served=dict(tally.ok),
        errors=dict(tally.errors),
        error_examples=tally.examples,
        updates=counts["updates"],
        update_errors=counts["update_errors"],
        seconds=round(seconds, 2),
        requests_per_s=round(done / seconds, 1) if seconds else 0.0,
        rss_warm_mb=round(rss_warm, 1),
        rss_end_mb=round(rss_end, 1),
        rss_growth_mb=round(rss_end - rss_warm, 1),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, help=f"requests in all (default {DEFAULTS['requests']})")
    p.add_argument(
        "--max-seconds",
        type=float,
        help=f"stop sending after this long (default {DEFAULTS['max_seconds']:.0f})",
    )
    p.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    p.add_argument(
        "--update-every", type=float, default=0.5, help="seconds between index updates (default 0.5)"
    )
    p.add_argument(
        "--reranker",
        default="",
        help="reranker for the server: a model directory or hub id, 'none' for "
        "search-only traffic (default: a tiny random BERT cross-encoder)",
    )
    p.add_argument(
        "--encoder", default="none", help="dense encoder for the index (default none: BM25; e.g. e5-small)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the traffic mix (default 0)")
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK['requests']} requests / {QUICK['max_seconds']:.0f} s"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    args.requests = args.requests or int(preset["requests"])
    args.max_seconds = args.max_seconds or float(preset["max_seconds"])
    if args.requests < 1 or args.concurrency < 1 or args.max_seconds <= 0 or args.update_every <= 0:
        p.error("--requests, --concurrency, --max-seconds and --update-every must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tansaku-soak-") as tmp:
        report = soak(args, Path(tmp))
    if args.json:
        print(json.dumps(asdict(report), ensure_ascii=False, indent=2))
    else:
        rows = [
            ["requests", str(report.requests)],
            ["served", ", ".join(f"{k} {v}" for k, v in sorted(report.served.items()))],
            ["errors", str(sum(report.errors.values())) + (f" ({report.errors})" if report.errors else "")],
            ["index updates", f"{report.updates} ({report.update_errors} failed)"],
            ["seconds", f"{report.seconds:.1f} ({report.requests_per_s:.1f} req/s)"],
            ["server RSS warm / end", f"{report.rss_warm_mb:.1f} / {report.rss_end_mb:.1f} MiB"],
            ["RSS growth", f"{report.rss_growth_mb:+.1f} MiB"],
        ]
        print(format_table(["soak", "value"], rows))
        for example in report.error_examples:
            print(f"  error: {example}")
    failed = sum(report.errors.values()) + report.update_errors
    print(
        f"verdict: {'PASS' if failed == 0 else 'FAIL'}: {report.requests} requests, "
        f"{failed} errors, {report.updates} updates, RSS {report.rss_growth_mb:+.1f} MiB",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
