"""Sharded dense search equals the unsharded index: the same positions, order and scores."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from tansaku.index import ConfigError, DenseIndex, FaissParams
from tansaku.index.dense import EXACT_MAX_ALLOWED, plan
from tansaku.index.dense_shards import ShardedDense, merge_faiss, sample_rows, train_points

N, DIM = 12_000, 32
CUTS = [2_500, 8_900]  # three shards of unequal sizes: 2,500, 6,400 and 3,100
# Flat below 10,000 vectors, where FAISS picks Flat itself (and scores each vector with the
# same kernel in any shard; see the note in dense_shards.py on larger Flat indexes)
FLAT_N, FLAT_CUTS = 9_500, [2_500, 6_400]
# nlist=64 keeps training fast and samples 9,984 of the 12,000 rows (PQ's 39 x 256 minimum)
IVFPQ = FaissParams(kind="ivfpq", nlist=64, m=8, nprobe=8, rescore=4)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_sharded(x: np.ndarray, params: FaissParams, cuts: list[int]) -> ShardedDense:
    """Train once on the rows an unsharded build samples, picked from the shards' parts."""
    parts = np.split(x, cuts)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    resolved, _ = plan(len(x), x.shape[1], params)
    rows = sample_rows(len(x), train_points(len(x), resolved), resolved.seed)
    owner = np.searchsorted(offsets, rows, side="right") - 1
    sample = np.concatenate([x[:0]] + [part[rows[owner == i] - offsets[i]] for i, part in enumerate(parts)])
    trained = ShardedDense.train(sample, len(x), x.shape[1], params)
    return ShardedDense([trained.with_vectors(p) for p in parts], trained.params, trained.reason)


def queries(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), n, replace=False)] + 0.1 * rng.normal(size=(n, x.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def masks(n: int, cuts: list[int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    selective = rng.random(n) < 0.03
    broad = rng.random(n) < 0.6
    # Uneven over the shards: allowed densely in the first, barely in the last, so counts
    # taken per shard (not globally) would widen nprobe differently.
    shard = np.searchsorted(cuts, np.arange(n), side="right")
    uneven = rng.random(n) < np.array([0.95, 0.7, 0.02])[shard]
    assert selective.sum() <= EXACT_MAX_ALLOWED < broad.sum() and uneven.sum() > EXACT_MAX_ALLOWED
    return {"selective": selective, "broad": broad, "uneven": uneven}


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    assert got[1].shape == want[1].shape and got[1].dtype == want[1].dtype
    assert np.array_equal(got[1], want[1]), np.argwhere(got[1] != want[1])[:5]
    assert got[0].dtype == want[0].dtype and np.array_equal(got[0], want[0])


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return unit_vectors(N, DIM, seed=0)


@pytest.fixture(scope="module")
def ivfpq(data) -> tuple[DenseIndex, ShardedDense]:
    return DenseIndex.build(data, IVFPQ), build_sharded(data, IVFPQ, CUTS)


@pytest.fixture(scope="module")
def flat(data) -> tuple[DenseIndex, ShardedDense]:
    params = FaissParams(kind="flat")
    return DenseIndex.build(data[:FLAT_N], params), build_sharded(data[:FLAT_N], params, FLAT_CUTS)


def test_training_draws_and_trains_like_the_unsharded_build(data, ivfpq):
    whole, sharded = ivfpq
    n_train = train_points(N, whole.params)
    assert n_train == 39 * 256 < N and train_points(N, plan(N, DIM, FaissParams(kind="flat"))[0]) == 0
    rows = sample_rows(N, n_train, IVFPQ.seed)
    # the draw DenseIndex.build has always made
    expected = np.sort(np.random.default_rng(IVFPQ.seed).choice(N, n_train, replace=False))
    assert np.array_equal(rows, expected) and np.array_equal(sample_rows(N, N, 1), np.arange(N))
    assert sharded.params == whole.params and sharded.reason == whole.reason
    assert sharded.offsets == (0, 2_500, 8_900, N) and sharded.ntotal == N and sharded.dim == DIM
    assert [s.ntotal for s in sharded.shards] == sharded.describe()["shards"] == [2_500, 6_400, 3_100]
    ivf = faiss.extract_index_ivf(whole.index)
    for shard in sharded.shards:
        shard_ivf = faiss.extract_index_ivf(shard.index)
        assert np.array_equal(shard_ivf.quantizer.reconstruct_n(0, 64), ivf.quantizer.reconstruct_n(0, 64))
        assert np.array_equal(
            faiss.vector_to_array(shard.index.pq.centroids), faiss.vector_to_array(whole.index.pq.centroids)
        )
    # Every document has the same PQ code in its shard as in the unsharded index.
    codes = faiss.extract_index_ivf(whole.index).sa_encode(data)
    for shard, lo in zip(sharded.shards, sharded.offsets, strict=False):
        assert np.array_equal(
            shard.index.sa_encode(data[lo : lo + shard.ntotal]), codes[lo : lo + shard.ntotal]
        )
    assert sharded.describe()["vectors"] == N
    positions = np.array([N - 1, 0, 2_500, 2_499, 8_900, 7])
    assert np.array_equal(sharded.vectors_at(positions), data[positions])


@pytest.mark.parametrize("n_queries", [1, 40])  # 40: FAISS scores batches of 20+ with BLAS
@pytest.mark.parametrize(
    "options", [{}, {"rescore": 0}, {"nprobe": 2}, {"nprobe": 2, "rescore": 0}, {"nprobe": 64}]
)
def test_ivfpq_unfiltered_equals_unsharded(data, ivfpq, n_queries, options):
    whole, sharded = ivfpq
    q = queries(data, n_queries, seed=n_queries)
    for k in (1, 10, 100):
        assert_same(sharded.search(q, k, **options), whole.search(q, k, **options))


def test_ivfpq_pads_like_faiss_when_the_probed_lists_hold_fewer_than_k(data, ivfpq):
    whole, sharded = ivfpq
    q = queries(data, 5, seed=4)
    for options in ({"nprobe": 1}, {"nprobe": 1, "rescore": 0}):
        got = sharded.search(q, 500, **options)
        assert_same(got, whole.search(q, 500, **options))
        assert (got[1] == -1).any()


def test_ivfpq_global_shortlist_is_not_per_shard_rescoring(data, ivfpq):
    whole, sharded = ivfpq
    q = queries(data, 40, seed=3)
    want = whole.search(q, 10)
    assert_same(sharded.search(q, 10), want)
    # Re-scoring each shard's own shortlist (then merging) keeps other candidates: the
    # comparison above tells the two apart.
    per_shard = [s.search(q, 10) for s in sharded.shards]
    naive = merge_faiss(
        [(sc, np.where(p >= 0, p + lo, -1)) for (sc, p), lo in zip(per_shard, sharded.offsets, strict=False)],
        10,
    )
    assert not np.array_equal(naive[1], want[1])


@pytest.mark.parametrize("n_queries", [1, 40])
@pytest.mark.parametrize("mask", ["selective", "broad", "uneven"])
@pytest.mark.parametrize("options", [{}, {"rescore": 0}, {"exact_max": 0}, {"exact_max": 0, "nprobe": 1}])
def test_ivfpq_filtered_equals_unsharded(data, ivfpq, n_queries, mask, options):
    whole, sharded = ivfpq
    allowed = masks(N, CUTS)[mask]
    q = queries(data, n_queries, seed=5 + n_queries)
    for k in (1, 10, 100):
        got, want = (
            sharded.search(q, k, allowed=allowed, **options),
            whole.search(q, k, allowed=allowed, **options),
        )
        assert_same(got, want)
        assert allowed[got[1][got[1] >= 0]].all()


def test_ivfpq_filtered_probes_all_lists_when_the_first_probe_finds_too_few(data, ivfpq):
    whole, sharded = ivfpq
    # Allow only the documents of the 16 lists farthest from the query: the widened probe
    # (nprobe / selectivity lists, fewer than all) finds none of them, the second finds k.
    ivf = faiss.extract_index_ivf(whole.index)
    _, lists = ivf.quantizer.search(data, 1)
    q = data[:1]
    far = np.argsort(ivf.quantizer.reconstruct_n(0, ivf.nlist) @ q[0])[:16]
    allowed = np.isin(lists[:, 0], far)
    wide = int(np.ceil(IVFPQ.nprobe * N / allowed.sum()))
    assert wide < ivf.nlist and not np.isin(ivf.quantizer.search(q, wide)[1], far).any()
    for options in ({"exact_max": 0}, {"exact_max": 0, "rescore": 0}):
        got = sharded.search(q, 100, allowed=allowed, **options)
        assert_same(got, whole.search(q, 100, allowed=allowed, **options))
        assert (got[1] >= 0).all()


@pytest.mark.parametrize("n_queries", [1, 40])
@pytest.mark.parametrize("mask", [None, "selective", "broad", "uneven"])
@pytest.mark.parametrize("exact_max", [None, 0])
def test_flat_equals_unsharded(data, flat, n_queries, mask, exact_max):
    whole, sharded = flat
    allowed = None if mask is None else masks(FLAT_N, FLAT_CUTS)[mask]
    q = queries(data, n_queries, seed=9)
    for k in (1, 10, 100):
        got = sharded.search(q, k, allowed=allowed, exact_max=exact_max)
        assert_same(got, whole.search(q, k, allowed=allowed, exact_max=exact_max))


def test_one_shard_equals_the_index(data, ivfpq, flat):
    q = queries(data, 20, seed=13)
    for whole, cuts in ((ivfpq[0], CUTS), (flat[0], FLAT_CUTS)):
        one = ShardedDense([whole], whole.params, whole.reason)
        assert one.offsets == (0, whole.ntotal)
        allowed = masks(whole.ntotal, cuts)
        for mask in (None, allowed["selective"], allowed["broad"], allowed["uneven"]):
            for options in ({}, {"rescore": 0}, {"exact_max": 0}):
                assert_same(
                    one.search(q, 50, allowed=mask, **options), whole.search(q, 50, allowed=mask, **options)
                )


def test_flat_ties_come_in_faiss_order():
    # Every vector three times, spread over the shards: equal scores in threes, in FAISS's
    # order (position descending) when k takes whole groups.
    base = unit_vectors(1_000, 16, seed=4)
    x = base[np.random.default_rng(5).permutation(np.repeat(np.arange(1_000), 3))]
    whole, sharded = DenseIndex.build(x), build_sharded(x, FaissParams(), [700, 1_900])
    q = np.concatenate([base[:5], unit_vectors(25, 16, seed=6)])
    for k in (3, 30, 300):
        got = sharded.search(q, k)
        assert_same(got, whole.search(q, k))
        assert (got[1][:5, 0] > got[1][:5, 1]).all()  # a query's own three copies, ties


def test_rejects_mismatched_shards_and_masks(data, ivfpq, flat):
    whole, sharded = ivfpq
    other = DenseIndex.build(data[:3_000], FaissParams(kind="ivfpq", nlist=64, m=8, nbits=4))
    with pytest.raises(ConfigError, match="share one trained quantizer"):
        ShardedDense([sharded.shards[0], other], IVFPQ)
    with pytest.raises(ConfigError, match="ivfpq"):
        ShardedDense([sharded.shards[0], flat[1].shards[0]], sharded.params)
    with pytest.raises(ConfigError, match="at least one"):
        ShardedDense([], IVFPQ)
    with pytest.raises(ConfigError, match="shape"):
        sharded.search(data[:1], 10, allowed=np.ones(5, bool))
    empty = sharded.search(data[:2], 10, allowed=np.zeros(N, bool))
    assert empty[0].shape == empty[1].shape == (2, 0)
