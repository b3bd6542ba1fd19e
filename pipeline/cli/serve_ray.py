"""``tansaku serve --ray``: the same server on a Ray cluster (see :mod:`tansaku.pipeline.cluster`)."""

from __future__ import annotations

import argparse
from typing import Any

from .options import reranker_options, say


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """The Ray group of ``tansaku serve``."""
    g = p.add_argument_group(
        "Ray Serve (scale-out; needs pip install 'tansaku[ray]'; INDEX must be sharded)",
        "Same endpoints, answers, API key and limits; the ingress fans out to shard "
        "deployments and a batched reranker deployment. A Ray cluster belongs on a trusted "
        "network: replicas listen on all interfaces.",
    )
    g.add_argument("--ray", action="store_true", help="serve on Ray Serve instead of in this process")
    g.add_argument(
        "--address",
        help="Ray cluster to join: 'auto' (this machine's), ray://HOST:10001, or none to start a local one",
    )
    g.add_argument(
        "--shards-per-replica", type=int, default=1, help="shards one shard deployment serves (default: 1)"
    )
    g.add_argument(
        "--shard-replicas", type=int, default=1, help="replicas of each shard deployment (default: 1)"
    )
    g.add_argument(
        "--ingress-replicas",
        type=int,
        default=1,
        help="replicas of the HTTP app; each searches one query at a time (default: 1)",
    )
    g.add_argument(
        "--reranker-replicas",
        default="1",
        metavar="MIN[:MAX]",
        help="reranker replicas; with MAX, autoscaled between them (default: 1)",
    )
    g.add_argument(
        "--reranker-gpus", type=float, default=0.0, help="GPUs per reranker replica (default: 0, CPU)"
    )
    g.add_argument(
        "--ray-batch-size",
        type=int,
        default=8,
        help="requests one reranker replica scores in one model call "
        "(@serve.batch; 1: no batching; default: 8)",
    )
    g.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=2.0,
        help="requests per reranker replica the autoscaler aims at (default: 2)",
    )


def run_on_ray(args: argparse.Namespace, app_options: dict[str, Any]) -> int:
    """Deploy the app on Ray Serve and serve until interrupted; ``app_options`` are the
    ingress app's :func:`~tansaku.pipeline.serve.create_app` keywords."""
    from tansaku.index.errors import TansakuError

    from ..cluster.session import connect, require_ray

    require_ray()
    low, _, high = args.reranker_replicas.partition(":")
    try:
        min_replicas, max_replicas = int(low), int(high or low)
    except ValueError:
        raise TansakuError(
            f"--reranker-replicas must be MIN or MIN:MAX, got {args.reranker_replicas!r}"
        ) from None
    from ..cluster.serve_app import RayServeConfig, run

    spec = None if args.reranker.lower() in ("", "none") else args.reranker
    config = RayServeConfig(
        shards_per_group=args.shards_per_replica,
        shard_replicas=args.shard_replicas,
        ingress_replicas=args.ingress_replicas,
        reranker_min_replicas=min_replicas,
        reranker_max_replicas=max_replicas,
        reranker_gpus=args.reranker_gpus,
        max_batch_size=args.ray_batch_size,
        target_ongoing_requests=args.target_ongoing_requests,
        reranker_max_queued=args.max_queue,
        reranker_torch_threads=args.torch_threads,
        reranker_options=reranker_options(args),
    )
    connect(args.address)
    say(f"Ray Serve: http://{args.host}:{args.port} (ingress, shard deployments, reranker {spec or 'none'})")
    run(
        None if args.no_index else args.index,
        spec,
        host=args.host,
        port=args.port,
        config=config,
        app_options=app_options,
        blocking=True,
    )
    return 0
