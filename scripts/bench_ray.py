#!/usr/bin/env python3
"""Ray Serve vs plain `tansaku serve` on the same sharded index, in one run (--help)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _bench_common import format_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSQUAD = REPO.parent / "shared" / "data" / "jsquad" / "valid-v1.3.json"

DESCRIPTION = """\
On a local Ray cluster (--cpus CPUs), against the same sharded JSQuAD index (--shards):
  search:  /v1/search (bm25, top 10, no reranker): p50/p99 latency of one client, and
           throughput with --concurrency clients, plain `tansaku serve` (one process) vs
           the Ray Serve app (ingress + one deployment per shard);
  rerank:  /v1/rerank of --docs JSQuAD paragraphs per request, --concurrency clients:
           plain `tansaku serve --no-index` vs Ray with 1 and 2 reranker replicas, batched
           (@serve.batch, --batch requests per model call) and unbatched.
The reranker is an xsmall-sized cross-encoder (6 layers, hidden 384, built from the bundled
e5-small as in bench_rerank.py) unless --reranker DIR names one. Each Ray replica gets
--torch-threads torch threads, as does the plain server. Ratios are Ray / plain.
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not start")


def measure(url: str, route: str, bodies: list[dict], concurrency: int) -> dict[str, float]:
    """One client in a row (latency), then ``concurrency`` clients (throughput)."""
    with httpx.Client(timeout=600) as client:
        client.post(url + route, json=bodies[0]).raise_for_status()  # warm-up
        latencies = []
        for body in bodies:
            t0 = time.perf_counter()
            client.post(url + route, json=body).raise_for_status()
            latencies.append(time.perf_counter() - t0)

    local = threading.local()
    clients: list[httpx.Client] = []

    def one(body: dict) -> None:
        if not hasattr(local, "client"):  # one keep-alive connection per client thread
            local.client = httpx.Client(timeout=600)
            clients.append(local.client)
        local.client.post(url + route, json=body).raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies * 2))
    elapsed = time.perf_counter() - t0
    for client in clients:
        client.close()
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": 2 * len(bodies) / elapsed,
    }


def plain_server(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        ["tansaku", "serve", *args, "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return proc, url


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jsquad", type=Path, default=DEFAULT_JSQUAD)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--queries", type=int, default=100, help="search requests per measurement (default: 100)")
    p.add_argument("--rerank-requests", type=int, default=24, help="rerank requests per measurement")
    p.add_argument("--docs", type=int, default=20, help="documents per rerank request (default: 20)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="requests per batched model call (default: 8)")
    p.add_argument("--cpus", type=float, default=2, help="CPUs of the local Ray cluster (default: 2)")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--reranker", type=Path, help="cross-encoder directory (default: build an xsmall one)")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = p.parse_args(argv)
    if not args.jsquad.exists():
        raise SystemExit(f"JSQuAD not found at {args.jsquad} (--jsquad)")

    data = json.loads(args.jsquad.read_text(encoding="utf-8"))
    paragraphs = [p for a in data["data"] for p in a["paragraphs"]]
    questions = [q["question"] for p in paragraphs for q in p["qas"]]
    docs = [p["context"].replace(" [SEP] ", " ") for p in paragraphs]

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(tmp)}
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "RAY_USAGE_STATS_ENABLED", "HOME")})
    corpus = tmp / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as out:
        for i, p in enumerate(paragraphs):
            title, _, text = p["context"].partition(" [SEP] ")
            out.write(json.dumps({"id": f"p{i}", "title": title, "text": text}, ensure_ascii=False) + "\n")
    index = tmp / "index"
    subprocess.run(
        [
            "tansaku",
            "build",
            str(index),
            str(corpus),
            "--shards",
            str(args.shards),
            "--encoder",
            "none",
            "-q",
        ],
        check=True,
        env=env,
    )
    if args.reranker is None:
        sys.path.insert(0, str(REPO / "scripts"))
        from bench_rerank import xsmall_model

        calibration = [(questions[i], docs[i % len(docs)]) for i in range(32)]
        args.reranker = xsmall_model(tmp / "reranker", calibration)

    search_bodies = [{"query": q, "top_n": 10, "mode": "bm25"} for q in questions[: args.queries]]
    rerank_bodies = [
        {"query": questions[i], "documents": docs[i : i + args.docs]} for i in range(args.rerank_requests)
    ]
    rows: list[dict[str, object]] = []

    def row(what: str, setup: str, m: dict[str, float], base: dict[str, float] | None) -> None:
        rows.append(
            {"what": what, "setup": setup, **m, "ratio": None if base is None else m["rps"] / base["rps"]}
        )
        print(
            f"{what:7} {setup:34} p50 {m['p50_ms']:8.1f} ms  p99 {m['p99_ms']:8.1f} ms  {m['rps']:7.1f} req/s"
        )

    threads = ["--torch-threads", str(args.torch_threads)]
    proc, url = plain_server([str(index)], env)
    try:
        plain_search = measure(url, "/v1/search", search_bodies, args.concurrency)
    finally:
        proc.terminate()
        proc.wait()
    row("search", "plain tansaku serve", plain_search, None)
    proc, url = plain_server(["--no-index", "--reranker", str(args.reranker), *threads], env)
    try:
        plain_rerank = measure(url, "/v1/rerank", rerank_bodies, args.concurrency)
    finally:
        proc.terminate()
        proc.wait()
    row("rerank", "plain tansaku serve", plain_rerank, None)

    import ray
    from ray import serve

    from tansaku.pipeline.cluster.serve_app import APP_NAME, RayServeConfig, run

    ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=str(tmp / "ray"), log_to_driver=False)
    try:
        port = free_port()
        ray_url = f"http://127.0.0.1:{port}"
        run(index, None, port=port, config=RayServeConfig())
        wait_ready(ray_url)
        row(
            "search",
            f"Ray: {args.shards} shard deployments",
            measure(ray_url, "/v1/search", search_bodies, args.concurrency),
            plain_search,
        )
        serve.delete(APP_NAME)
        for replicas in (1, 2):
            for batch in (args.batch, 1):
                config = RayServeConfig(
                    reranker_min_replicas=replicas,
                    reranker_max_replicas=replicas,
                    max_batch_size=batch,
                    reranker_cpus=min(0.5, args.cpus / 4),
                    reranker_torch_threads=args.torch_threads,
                )
                run(None, str(args.reranker), port=port, config=config)
                wait_ready(ray_url)
                label = f"Ray: {replicas} replica(s), " + (f"batch {batch}" if batch > 1 else "unbatched")
                row(
                    "rerank",
                    label,
                    measure(ray_url, "/v1/rerank", rerank_bodies, args.concurrency),
                    plain_rerank,
                )
                serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    print()
    print(
        format_table(
            ["what", "setup", "p50 ms", "p99 ms", "req/s", "Ray / plain"],
            [
                [
                    str(r["what"]),
                    str(r["setup"]),
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['rps']:.1f}",
                    "" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
