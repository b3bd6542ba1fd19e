"""A dense encoder trained on the user's own corpus: no labels, no download (``--encoder corpus``).

The model is a sentence-transformers ``StaticEmbedding`` (the mean of per-token vectors)
followed by ``Normalize``. Everything it needs lives in one ordinary sentence-transformers
directory, so ``SentenceTransformer(index_dir / "encoder")`` reproduces tansaku's query
vectors anywhere, without tansaku, MeCab or network access.

This module is the model: its configuration, tokenizer, saving and loading.
:mod:`.corpus_training` trains one on pairs mined by :mod:`.corpus_pairs`.

**Tokenizer** (measured on JSQuAD, dense-only nDCG@10; see :mod:`.corpus_training`). The
vocabulary is the corpus's MeCab (fugashi + unidic-lite) surface forms, stored as a
``tokenizers`` *Unigram* model scored by the words' log frequencies, plus every character
seen (scored below any word) so unseen words fall back to characters. MeCab cannot run
inside a ``tokenizer.json``, but Viterbi segmentation over MeCab's own words splits like it
(82% of questions token for token; most differences are context-dependent splits such as
海/気団 vs 海気/団) and retrieves as well as real MeCab tokens (0.921 vs 0.921). Unigram or
BPE vocabularies learnt from scratch on the same text do worse (0.89-0.91): they learn long
corpus-specific pieces that questions do not reproduce. The normaliser is NFKC + lowercase,
as :func:`tansaku.index.analyzer.normalize`.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import write_json
from ..checks import check_int
from ..errors import ConfigError, ModelLoadError
from ..paths import ENCODER_DIR
from .base import SentenceTransformerEncoder

if TYPE_CHECKING:
    from ..analyzer import Analyzer

INFO_FILE = "tansaku_corpus_encoder.json"  # training config + stats, beside the model files
UNK = "<unk>"


@dataclass(frozen=True)
class CorpusEncoderConfig:
    """How to train a corpus encoder. Defaults were chosen on JSQuAD (see :mod:`.corpus_training`).

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
            check_int(f"corpus encoder {name}", value, low)
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


# ---------------------------------------------------------------------------------------------
# Saving and loading


def save_corpus_encoder(
    out: Path, tokenizer: Any, weights: np.ndarray, config: CorpusEncoderConfig, stats: TrainingStats
) -> None:
    """Write ``tokenizer`` + token vectors ``weights`` to ``out`` as a sentence-transformers
    directory, with the training ``config`` and ``stats`` in ``INFO_FILE`` beside them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    table = np.ascontiguousarray(weights, dtype=np.float32)  # safetensors refuses strided arrays
    model = SentenceTransformer(
        modules=[StaticEmbedding(tokenizer, embedding_weights=table), Normalize()], device="cpu"
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    info = {"format": 1, "config": config.to_dict(), "stats": stats.to_dict()}
    write_json(out / INFO_FILE, info)


class CorpusEncoder:
    """The :class:`~tansaku.index.encoders.Encoder` of a directory made by
    :func:`~tansaku.index.encoders.corpus_training.train_corpus_encoder`.

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
