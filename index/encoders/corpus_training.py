"""Training a corpus encoder (:mod:`.corpus_encoder`): no labels, no download.

Choices, measured on JSQuAD (1,145 paragraphs, 4,442 questions; dense-only nDCG@10, where
LSA 256-d over the same MeCab tokens scores 0.873 and BM25 0.935; the tokenizer's choices are
in :mod:`.corpus_encoder`):

* **Initialisation.** Token vectors start as LSA: ``idf(t) * V[t]`` from a truncated SVD of
  the documents' TF-IDF matrix, so the mean of a text's token vectors is its LSA projection
  (0.847 before any training; random init ends ~0.02 lower after training).
* **Training.** ``MultipleNegativesRankingLoss`` (in-batch negatives, both directions) on
  self-supervised pairs mined from the corpus only (:mod:`.corpus_pairs`): inverse cloze (a
  sentence → title + the text around it), title → text and first half → second half. A plain
  PyTorch loop (no ``datasets``/``accelerate``), single-threaded so a fixed seed gives
  identical weights, with lazy Adam updates so a step costs the same whatever the vocabulary
  size. 0.921 ± 0.002 over seeds, in ~10 s of training on 2 CPU cores.

Time and memory are bounded whatever the corpus size: the corpus is read once, pairs and the
documents used for the vocabulary/LSA are reservoir-sampled (``max_pairs``, ``sample_docs``),
pair texts are cut to ``max_context_chars`` and the vocabulary is capped (``max_vocab``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..analyzer import Analyzer, get_analyzer, normalize
from ..errors import ConfigError
from ..hit import indexed_text
from .corpus_encoder import CorpusEncoderConfig, TrainingStats, build_tokenizer, save_corpus_encoder
from .corpus_pairs import Pair, Reservoir, mine_pairs

# Characters of a sampled document kept for the vocabulary and the LSA init: bounds the
# sample's memory (sample_docs x this) when documents are whole books.
SAMPLE_DOC_CHARS = 20_000


def _title_text(item: str | tuple[str, str] | Sequence[str]) -> tuple[str, str]:
    if isinstance(item, str):
        return "", item
    if isinstance(item, Sequence) and len(item) == 2:
        title, text = item
        return str(title or ""), str(text or "")
    raise ConfigError(f"corpus encoder input must be texts or (title, text) pairs, got {type(item).__name__}")


def _token_ids(tokenizer: Any, texts: Sequence[str], chunk: int = 2048) -> list[np.ndarray]:
    """Token ids of each text as int32 (widened per batch): half the memory of int64.

    Encoded in chunks because a ``tokenizers.Encoding`` also holds token strings, offsets and
    masks: 400k of them at once (max_pairs x 2 texts) took ~2 GB.
    """
    out: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        encodings = tokenizer.encode_batch_fast(list(texts[start : start + chunk]), add_special_tokens=False)
        out.extend(np.asarray(e.ids, dtype=np.int32) for e in encodings)
    return out


# ---------------------------------------------------------------------------------------------
# Initialisation


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of ``y``'s columns, through its small Gram matrix.

    ``np.linalg.qr``/``svd`` of a tall matrix take seconds on a busy 2-core machine (and
    100x longer when OpenBLAS threads contend); a Gram matrix and a tiny ``eigh`` do not.
    """
    w, u = np.linalg.eigh(y.T @ y)
    keep = w > max(float(w.max()), 1e-300) * 1e-10
    return np.asarray(y @ (u[:, keep] / np.sqrt(w[keep])))


def _randomized_svd_vt(matrix: Any, k: int, rng: np.random.Generator, n_iter: int = 4) -> np.ndarray:
    """Top-``k`` right singular vectors (at most k × n_cols) of a sparse matrix (Halko et al. 2011).

    ARPACK (``scipy.sparse.linalg.svds``) takes ~20 s for k=256 on the 1,145 JSQuAD paragraphs;
    a randomized range finder with a few power iterations needs a fraction of that, and its
    cost grows with the number of non-zeros.
    """
    n_rows, n_cols = matrix.shape
    width = min(k + 16, n_rows, n_cols)
    q = _orthonormal(matrix @ rng.standard_normal((n_cols, width)))
    for _ in range(n_iter):
        q = _orthonormal(matrix @ (matrix.T @ q))
    b = np.asarray((matrix.T @ q).T)  # width × n_cols; matrix ≈ q @ b
    w, u = np.linalg.eigh(b @ b.T)  # ascending
    order = np.argsort(-w)[:k]
    w, u = w[order], u[:, order]
    keep = w > max(float(w.max()), 1e-300) * 1e-10
    return np.asarray((u[:, keep].T @ b) / np.sqrt(w[keep])[:, None])


def lsa_token_vectors(doc_ids: Sequence[np.ndarray], vocab_size: int, dim: int, seed: int) -> np.ndarray:
    """Token vectors whose mean over a text is its LSA projection: ``idf(t) * V[t]``.

    ``V`` spans the top singular directions of the L2-normalised TF-IDF document matrix with
    sublinear term frequencies (1 + log tf): a better basis than raw counts (LSA nDCG@10 on
    JSQuAD 0.873 vs 0.798, and 0.913 vs 0.909 after training). The mean of token vectors can
    only apply raw counts, which training then compensates for.
    Directions beyond the matrix's rank (a tiny corpus) get small random values so that
    training can still use them (an all-zero column never receives a gradient).
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(len(doc_ids)), [len(ids) for ids in doc_ids])
    cols = np.concatenate(doc_ids).astype(np.int64) if doc_ids else np.zeros(0, dtype=np.int64)
    tf = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(doc_ids), vocab_size))
    tf.sum_duplicates()
    df = np.bincount(tf.indices, minlength=vocab_size)
    idf = np.log((1.0 + tf.shape[0]) / (1.0 + df)) + 1.0
    idf[df == 0] = 0.0  # tokens absent from the sample start at zero (plus the noise below)
    tf.data = 1.0 + np.log(tf.data)
    x = (tf @ sp.diags(idf)).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x).tocsr()
    vectors = np.zeros((vocab_size, dim))
    if x.nnz:
        vt = _randomized_svd_vt(x, min(dim, *x.shape), rng)
        vectors[:, : len(vt)] = vt.T * idf[:, None]
    scale = np.linalg.norm(vectors, axis=1)
    typical = float(scale[scale > 0].mean()) if np.any(scale > 0) else 1.0
    vectors /= typical  # rows of norm ~1, like the random init, so one learning rate fits both
    vectors += rng.normal(0.0, 0.01 / math.sqrt(dim), size=vectors.shape)
    return vectors.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Training


@contextmanager
def _single_thread() -> Iterator[None]:
    """One torch (and BLAS) thread: deterministic sums, and faster than 2 contended threads.

    Steps here are small; on a shared 2-core machine extra threads mostly wait on each other.
    BLAS is limited through ``threadpoolctl`` when it is importable (sentence-transformers
    brings it in with scikit-learn); without it only torch is limited.
    """
    import torch

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - present with sentence-transformers' scikit-learn
        threadpool_limits = None
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=1):
                yield
    finally:
        torch.set_num_threads(before)


def _bag(ids: Sequence[np.ndarray]) -> tuple[Any, Any]:
    """EmbeddingBag inputs: all token ids in one flat tensor + where each text starts."""
    import torch

    lengths = [len(x) for x in ids]
    flat = np.concatenate(ids).astype(np.int64) if sum(lengths) else np.zeros(0, dtype=np.int64)
    offsets = np.cumsum([0, *lengths[:-1]])
    return torch.from_numpy(flat), torch.from_numpy(offsets.astype(np.int64))


def _train(
    weights: np.ndarray,
    anchors: list[np.ndarray],
    positives: list[np.ndarray],
    docs: np.ndarray,
    anchor_keys: np.ndarray,
    config: CorpusEncoderConfig,
    *,
    progress: bool,
) -> tuple[np.ndarray, int, float | None]:
    """In-batch-negatives contrastive training of the token vectors; returns (weights, steps, loss)."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    # Lazy (sparse) Adam: a step touches only the rows of the batch's tokens, so its cost does
    # not grow with the vocabulary (dense Adam over 100k x 256 rows would dominate each step).
    table = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)))
    optimizer = torch.optim.SparseAdam([table], lr=config.learning_rate)
    n = len(anchors)
    per_epoch = math.ceil(n / config.batch_size)
    order_rng = np.random.default_rng(config.seed)
    docs_t = torch.from_numpy(docs)
    keys_t = torch.from_numpy(anchor_keys)
    steps, last_loss = 0, None
    with tqdm(
        total=per_epoch * config.epochs, desc="train encoder", unit="step", disable=not progress
    ) as bar:
        for _epoch in range(config.epochs):
            order = order_rng.permutation(n)
            total, done = 0.0, 0
            for start in range(0, n, config.batch_size):
                batch = order[start : start + config.batch_size]
                if len(batch) < 2:  # a lone pair has no negatives
                    bar.update(1)
                    continue
                ids_a, offsets_a = _bag([anchors[i] for i in batch])
                ids_p, offsets_p = _bag([positives[i] for i in batch])
                # Gather the batch's distinct rows once: the gradient is then one dense row per
                # token instead of one per occurrence (nn.EmbeddingBag(sparse=True) made ~75k
                # rows a step and SparseAdam sorted them: 3.5x slower at batch size 512).
                rows, local = torch.unique(torch.cat([ids_a, ids_p]), return_inverse=True)
                sub = table.detach()[rows].requires_grad_()
                a = F.normalize(F.embedding_bag(local[: len(ids_a)], sub, offsets_a, mode="mean"), dim=-1)
                p = F.normalize(F.embedding_bag(local[len(ids_a) :], sub, offsets_p, mode="mean"), dim=-1)
                logits = config.scale * (a @ p.T)
                b = torch.from_numpy(batch)
                # Another pair of the same document, or with the same anchor text (documents
                # sharing a title), is not a negative.
                same = (docs_t[b][:, None] == docs_t[b][None, :]) | (keys_t[b][:, None] == keys_t[b][None, :])
                same.fill_diagonal_(False)
                logits = logits.masked_fill(same, -1e4)
                labels = torch.arange(len(batch))
                # Symmetric loss (anchor → positive and back): +0.01 nDCG@10 on JSQuAD.
                loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
                loss.backward()
                # rows is sorted and unique, so this sparse gradient is already coalesced.
                assert sub.grad is not None  # backward() just filled it
                table.grad = torch.sparse_coo_tensor(
                    rows.unsqueeze(0), sub.grad, table.shape, is_coalesced=True, check_invariants=False
                )
                optimizer.step()
                total += loss.item()
                done += 1
                steps += 1
                bar.update(1)
            if done:
                last_loss = total / done
                bar.set_postfix(loss=f"{last_loss:.3f}")
    return table.detach().numpy().astype(np.float32), steps, last_loss


def _stable_key(text: str) -> int:
    # Python's hash() of str changes per process; equality of anchors only needs a stable id.
    import zlib

    return zlib.crc32(text.encode("utf-8"))


def train_corpus_encoder(
    records_or_texts: Iterable[str | tuple[str, str]],
    out_dir: str | os.PathLike[str],
    config: CorpusEncoderConfig | None = None,
    *,
    analyzer: str | Analyzer = "ja-surface",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train an encoder on a corpus and save it as a sentence-transformers directory.

    ``records_or_texts`` is read once; each item is a document's text (``str``) or a
    ``(title, text)`` pair (e.g. ``((r.title, r.text) for r in records)``). ``analyzer``
    (name or object) gives the words of the vocabulary, as the BM25 index splits them.
    Returns ``out_dir``, which then loads with plain ``SentenceTransformer(out_dir)`` or
    :func:`load_corpus_encoder`; the training config and :class:`TrainingStats` are kept in
    ``out_dir / "tansaku_corpus_encoder.json"``.
    """
    from tqdm.auto import tqdm

    config = config or CorpusEncoderConfig()
    say = log or (lambda _msg: None)
    words = get_analyzer(analyzer) if isinstance(analyzer, str) else analyzer
    out = Path(out_dir)
    started = time.perf_counter()

    # One pass: uniform samples of pairs and of documents, so memory is bounded by
    # max_pairs and sample_docs however large the corpus is.
    pairs = Reservoir(config.max_pairs, config.seed)
    sample = Reservoir(config.sample_docs, config.seed + 1)
    n_docs = 0
    for item in tqdm(records_or_texts, desc="mine pairs", unit="doc", disable=not progress):
        title, text = _title_text(item)
        sample.add(indexed_text(title, text)[:SAMPLE_DOC_CHARS])
        for pair in mine_pairs(
            title,
            text,
            n_docs,
            min_sentence_chars=config.min_sentence_chars,
            max_context_chars=config.max_context_chars,
        ):
            pairs.add(pair)
        n_docs += 1
    items: list[Pair] = pairs.items
    pairs_seen = pairs.seen
    if len(items) < 2:
        raise ConfigError(
            f"cannot train a corpus encoder on {n_docs} document(s): they give {len(items)} "
            "training pair(s); it needs documents with titles or several sentences"
        )
    say(
        f"corpus encoder: {n_docs:,} docs, {pairs_seen:,} pairs mined, {len(items):,} used "
        f"(max_pairs {config.max_pairs:,}) in {time.perf_counter() - started:.1f}s"
    )

    t0 = time.perf_counter()
    tokenizer = build_tokenizer(sample.items, words, min_count=config.min_count, max_vocab=config.max_vocab)
    vocab_size = tokenizer.get_vocab_size()
    say(
        f"corpus encoder: vocabulary {vocab_size:,} tokens from {len(sample.items):,} docs "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    with _single_thread():
        t0 = time.perf_counter()
        if config.init == "lsa":
            weights = lsa_token_vectors(
                _token_ids(tokenizer, sample.items), vocab_size, config.dim, config.seed
            )
        else:
            rng = np.random.default_rng(config.seed)
            weights = rng.normal(0.0, 1.0 / math.sqrt(config.dim), size=(vocab_size, config.dim)).astype(
                np.float32
            )
        anchors = _token_ids(tokenizer, [p.anchor for p in items])
        positives = _token_ids(tokenizer, [p.positive for p in items])
        docs = np.asarray([p.doc for p in items], dtype=np.int64)
        keys = np.asarray([_stable_key(normalize(p.anchor)) for p in items], dtype=np.int64)
        del items, pairs, sample  # the texts are no longer needed, only their token ids
        say(f"corpus encoder: {config.init} init and pair tokenisation in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        weights, steps, loss = _train(weights, anchors, positives, docs, keys, config, progress=progress)
    say(
        f"corpus encoder: {steps:,} steps in {time.perf_counter() - t0:.1f}s"
        + (f", final loss {loss:.3f}" if loss is not None else "")
    )

    stats = TrainingStats(
        docs=n_docs,
        pairs_mined=int(pairs_seen),
        pairs_used=len(anchors),
        vocab_size=vocab_size,
        steps=steps,
        final_loss=None if loss is None else round(loss, 6),
        seconds=round(time.perf_counter() - started, 3),
    )
    save_corpus_encoder(out, tokenizer, weights, config, stats)
    say(f"corpus encoder: saved to {out} ({time.perf_counter() - started:.1f}s in all)")
    return out
