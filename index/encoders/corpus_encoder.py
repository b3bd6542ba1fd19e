"""A dense encoder trained on the user's own corpus: no labels, no download (``--encoder corpus``).

The model is a sentence-transformers ``StaticEmbedding`` (the mean of per-token vectors)
followed by ``Normalize``. Everything it needs lives in one ordinary sentence-transformers
directory, so ``SentenceTransformer(index_dir / "encoder")`` reproduces tansaku's query
vectors anywhere, without tansaku, MeCab or network access.

Choices, measured on JSQuAD (1,145 paragraphs, 4,442 questions; dense-only nDCG@10, where
LSA 256-d over the same MeCab tokens scores 0.873 and BM25 0.935):

* **Tokenizer.** The vocabulary is the corpus's MeCab (fugashi + unidic-lite) surface forms,
  stored as a ``tokenizers`` *Unigram* model scored by the words' log frequencies, plus every
  character seen (scored below any word) so unseen words fall back to characters. MeCab
  cannot run inside a ``tokenizer.json``, but Viterbi segmentation over MeCab's own words
  splits like it (82% of questions token for token; most differences are context-dependent
  splits such as 海/気団 vs 海気/団) and retrieves as well as real MeCab tokens (0.921 vs
  0.921). Unigram or BPE vocabularies learnt from scratch on the same text do worse
  (0.89-0.91): they learn long corpus-specific pieces that questions do not reproduce.
  The normaliser is NFKC + lowercase, as :func:`tansaku.index.analyzer.normalize`.
* **Initialisation.** Token vectors start as LSA: ``idf(t) * V[t]`` from a truncated SVD of
  the documents' TF-IDF matrix, so the mean of a text's token vectors is its LSA projection
  (0.847 before any training; random init ends ~0.02 lower after training).
* **Training.** ``MultipleNegativesRankingLoss`` (in-batch negatives, both directions) on
  self-supervised pairs mined from the corpus only: inverse cloze (a sentence → title + the
  text around it), title → text and first half → second half. A plain PyTorch loop (no
  ``datasets``/``accelerate``), single-threaded so a fixed seed gives identical weights, with
  lazy Adam updates so a step costs the same whatever the vocabulary size. 0.921 ± 0.002
  over seeds, in ~10 s of training on 2 CPU cores.

Time and memory are bounded whatever the corpus size: the corpus is read once, pairs and the
documents used for the vocabulary/LSA are reservoir-sampled (``max_pairs``, ``sample_docs``),
pair texts are cut to ``max_context_chars`` and the vocabulary is capped (``max_vocab``).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..analyzer import Analyzer, get_analyzer, normalize
from ..errors import ConfigError, ModelLoadError
from .base import SentenceTransformerEncoder

ENCODER_DIR = "encoder"  # where the index builder keeps a bundled corpus encoder
INFO_FILE = "tansaku_corpus_encoder.json"  # training config + stats, beside the model files
UNK = "<unk>"
# Characters of a sampled document kept for the vocabulary and the LSA init: bounds the
# sample's memory (sample_docs x this) when documents are whole books.
SAMPLE_DOC_CHARS = 20_000

# A sentence ends at a line break or after 。！？!? (full- or half-width, with any closing
# brackets/quotes), or after a "." followed by a space (English; "3.5" and "e.g" stay whole).
_SENTENCE = re.compile(r"[^\n]+?(?:[。！？!?]+[」』）)\]\"'”’]*|\.(?=\s)|$)", re.MULTILINE)


@dataclass(frozen=True)
class CorpusEncoderConfig:
    """How to train a corpus encoder. Defaults were chosen on JSQuAD (see the module docstring).

    ``max_pairs`` and ``sample_docs`` bound training time and memory for any corpus size;
    ``epochs`` passes over at most ``max_pairs`` pairs, so at most
    ``epochs * ceil(max_pairs / batch_size)`` optimizer steps are taken.
    """

    dim: int = 256
    max_pairs: int = 200_000  # training pairs kept (uniform reservoir sample of all mined)
    epochs: int = 5  # 3-8 measured alike on JSQuAD; 10+ drifts away from the lexical LSA start
    batch_size: int = 512  # in-batch negatives: 512 > 256 (+0.003 nDCG@10)
    learning_rate: float = 0.02  # Adam on the token vectors (0.05 and 0.01 measured no better)
    scale: float = 10.0  # cosine multiplier in the softmax (1 / temperature): 10 > 20 by +0.01
    min_count: int = 1  # words seen fewer times become characters (single characters always kept)
    max_vocab: int = 100_000  # most frequent words kept; dim 256 float32 → ~100 MB at the cap
    sample_docs: int = 50_000  # documents (reservoir sample) for the vocabulary and the LSA init
    min_sentence_chars: int = 8  # shorter sentences make poor inverse-cloze queries
    # Longest anchor/positive: a pair's positive is the text *around* its sentence, so a long
    # document does not make every one of its pairs as long as the document (quadratic memory).
    max_context_chars: int = 2_000
    init: str = "lsa"  # "lsa" or "random"
    seed: int = 42

    def __post_init__(self) -> None:
        # epochs=0 keeps the LSA initialisation; a batch needs 2 pairs to have a negative.
        least = {"epochs": 0, "min_sentence_chars": 0, "batch_size": 2}
        for name in (
            "dim",
            "max_pairs",
            "epochs",
            "batch_size",
            "min_count",
            "max_vocab",
            "sample_docs",
            "min_sentence_chars",
            "max_context_chars",
        ):
            value = getattr(self, name)
            low = least.get(name, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"corpus encoder {name} must be an integer >= {low}, got {value!r}")
        if not (self.learning_rate > 0 and self.scale > 0):
            raise ConfigError("corpus encoder learning_rate and scale must be > 0")
        if self.init not in ("lsa", "random"):
            raise ConfigError(f"corpus encoder init must be 'lsa' or 'random', got {self.init!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusEncoderConfig:
        """The config recorded by :meth:`to_dict` (unknown keys are ignored, for newer files)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingStats:
    """What a training run did; saved in ``tansaku_corpus_encoder.json`` and logged."""

    docs: int  # documents read
    pairs_mined: int  # pairs found in the whole corpus
    pairs_used: int  # pairs trained on (<= max_pairs)
    vocab_size: int  # tokenizer entries (words + characters + <unk>)
    steps: int
    final_loss: float | None  # mean loss over the last epoch (None: no training steps)
    seconds: float  # whole run, reading the corpus included

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Pairs


@dataclass(frozen=True)
class Pair:
    """A self-supervised training pair: a query-like ``anchor`` and the text it should find."""

    anchor: str
    positive: str
    doc: int  # document number: pairs of one document are never each other's negatives


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after 。！？!? (or ". "), and at line breaks; empty ones dropped."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def _context(sentences: list[str], skip: int, budget: int) -> str:
    """The sentences around ``sentences[skip]`` (itself left out), in text order, up to ``budget`` chars.

    Grows one sentence at a time on alternate sides, so the nearest context comes first; a
    neighbour too long for the budget is cut rather than leaving the context empty.
    """
    lo, hi, used = skip, skip + 1, 0
    grew = True
    while grew:
        grew = False
        if hi < len(sentences) and used + len(sentences[hi]) <= budget:
            used += len(sentences[hi])
            hi += 1
            grew = True
        if lo > 0 and used + len(sentences[lo - 1]) <= budget:
            lo -= 1
            used += len(sentences[lo])
            grew = True
    if used == 0:
        neighbour = sentences[skip + 1] if skip + 1 < len(sentences) else sentences[skip - 1]
        return neighbour[:budget]
    return "".join(sentences[lo:skip] + sentences[skip + 1 : hi])


def mine_pairs(
    title: str, text: str, doc: int, *, min_sentence_chars: int = 8, max_context_chars: int = 2_000
) -> Iterator[Pair]:
    """Self-supervised (query-like, document-like) pairs from one document.

    * title → text (a title is a short query about its text);
    * inverse cloze: each sentence → title + the paragraph *without* it, so the model must
      match a sentence by its topic rather than by copying (keeping the sentence in, or adding
      random crops of it as extra queries, measured no better on JSQuAD);
    * first half → second half of the sentences.

    Texts longer than ``max_context_chars`` are cut to the part nearest the anchor.
    """
    budget = max_context_chars
    title, text = title.strip(), text.strip()
    if title and text:
        yield Pair(title, text[:budget], doc)
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return
    for i, sentence in enumerate(sentences):
        if len(sentence) < min_sentence_chars:
            continue
        rest = _context(sentences, i, budget)
        yield Pair(sentence[:budget], f"{title} {rest}" if title else rest, doc)
    half = len(sentences) // 2
    yield Pair("".join(sentences[:half])[-budget:], "".join(sentences[half:])[:budget], doc)


class _Reservoir:
    """A uniform sample of at most ``size`` items from a stream (Algorithm R), seeded."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.items: list[Any] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self._rng.randrange(self.seen + 1)
            if j < self.size:
                self.items[j] = item
        self.seen += 1


def _title_text(item: str | tuple[str, str] | Sequence[str]) -> tuple[str, str]:
    if isinstance(item, str):
        return "", item
    if isinstance(item, Sequence) and len(item) == 2:
        title, text = item
        return str(title or ""), str(text or "")
    raise ConfigError(f"corpus encoder input must be texts or (title, text) pairs, got {type(item).__name__}")


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _pre_tokenizer() -> Any:
    """Split on whitespace, isolate punctuation and digit runs (MeCab splits there too)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=False),
        ]
    )


def build_tokenizer(
    texts: Iterable[str], analyzer: Analyzer, *, min_count: int = 1, max_vocab: int = 100_000
) -> Any:
    """A ``tokenizers.Tokenizer``: Unigram over the analyzer's words + every character seen.

    A word's score is its log relative frequency, so Viterbi segmentation prefers the
    corpus's frequent words as MeCab split them; characters come last so a word outside
    the vocabulary still gets (shared) character vectors instead of ``<unk>``. Entries the
    pre-tokenizer could never produce whole (words containing punctuation or spaces) are
    dropped.
    """
    from tokenizers import Tokenizer, models, normalizers

    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for text in texts:
        tokens = analyzer.tokenize(text)
        words.update(tokens)
        chars.update("".join(tokens))
    pre = _pre_tokenizer()

    def whole(piece: str) -> bool:
        return [p for p, _ in pre.pre_tokenize_str(piece)] == [piece]

    vocab: dict[str, int] = {}
    # most_common breaks ties by first occurrence, so the vocabulary is deterministic.
    for word, count in words.most_common():
        if count < min_count or len(vocab) >= max_vocab:
            break
        if whole(word):
            vocab[word] = count
    total = float(sum(vocab.values())) or 1.0
    pieces = [(UNK, 0.0)] + [(piece, math.log(count / total)) for piece, count in vocab.items()]
    # A character that MeCab never returned alone scores below the rarest word: scored by
    # its frequency inside words it would outbid rare words made of common characters
    # (粉もの → 粉/も/の), and most such rare words are names that matter for retrieval.
    floor = math.log(0.5 / total)
    pieces += [(ch, floor) for ch, _ in chars.most_common() if ch not in vocab and whole(ch)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = _pre_tokenizer()
    return tokenizer


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
    pairs = _Reservoir(config.max_pairs, config.seed)
    sample = _Reservoir(config.sample_docs, config.seed + 1)
    n_docs = 0
    for item in tqdm(records_or_texts, desc="mine pairs", unit="doc", disable=not progress):
        title, text = _title_text(item)
        sample.add((f"{title} {text}" if title else text)[:SAMPLE_DOC_CHARS])
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
    _save(out, tokenizer, weights, config, stats)
    say(f"corpus encoder: saved to {out} ({time.perf_counter() - started:.1f}s in all)")
    return out


def _save(
    out: Path, tokenizer: Any, weights: np.ndarray, config: CorpusEncoderConfig, stats: TrainingStats
) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    table = np.ascontiguousarray(weights, dtype=np.float32)  # safetensors refuses strided arrays
    model = SentenceTransformer(
        modules=[StaticEmbedding(tokenizer, embedding_weights=table), Normalize()], device="cpu"
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    info = {"format": 1, "config": config.to_dict(), "stats": stats.to_dict()}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Using a trained encoder


class CorpusEncoder:
    """The :class:`~tansaku.index.encoders.Encoder` of a directory made by :func:`train_corpus_encoder`.

    Encoding goes through sentence-transformers exactly as ``SentenceTransformer(path)``
    would, so the vectors are the ones any other tool gets from the saved directory. An empty
    text has no tokens and encodes to the zero vector.
    """

    name = "corpus"

    def __init__(
        self, path: str | os.PathLike[str], *, batch_size: int = 256, device: str | None = "cpu"
    ) -> None:
        self.path = Path(path)
        info_file = self.path / INFO_FILE
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(
                f"{self.path} is not a tansaku corpus encoder (no {INFO_FILE}); train one with "
                "--encoder corpus, or pass it as a plain sentence-transformers model"
            ) from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {info_file}: {exc}") from exc
        if not isinstance(info, dict):
            raise ModelLoadError(f"cannot read {info_file}: not a JSON object")
        self.config = CorpusEncoderConfig.from_dict(info.get("config", {}))
        self.stats: dict[str, Any] = dict(info.get("stats", {}))
        # device="cpu" by default: a static embedding is a table lookup, faster on CPU than
        # the transfer to a GPU.
        self._st = SentenceTransformerEncoder(self.path, batch_size=batch_size, device=device)
        self.model = self._st.model
        self.dim = self._st.dim

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._st.encode_queries(texts)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._st.encode_documents(texts)

    def to_config(self) -> dict[str, Any]:
        """Manifest entry: the model sits at ``<index>/encoder`` (``bundled``: relative to the index)."""
        return {
            "type": "corpus",
            "path": ENCODER_DIR,
            "dim": self.dim,
            "bundled": True,
            "training": self.config.to_dict(),
            "stats": self.stats,
        }


def load_corpus_encoder(path: str | os.PathLike[str], **options: Any) -> CorpusEncoder:
    """Open a trained corpus encoder directory (e.g. ``index_dir / "encoder"``)."""
    return CorpusEncoder(path, **options)
