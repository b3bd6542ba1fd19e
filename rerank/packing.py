"""Padding-free encoder layers for BERT-family cross-encoders on the CPU.

Why: a batch of (query, passage) pairs is padded to its longest pair, and every padded
position costs as much as a real token in each linear layer, and more in attention (which
grows with the square of the padded width). Even sorted by length, the JSQuAD pairs of
``scripts/bench_rerank.py`` are ~28 % padding in batches of 32. Here the encoder's layers run
on the real tokens only: the embeddings' output is packed into one ``[tokens, hidden]``
matrix, the linear layers, LayerNorms and activation run on that, and attention runs per
pair at its own length (no mask needed). The result is scattered back to the padded layout,
so the model's pooler and head run unchanged. Scores equal the padded forward's up to float
rounding (~1e-6). Only right-padded batches (the BERT family's default) are packed.

Which models: encoders whose layers have the BERT layout (``attention.self`` with
``query``/``key``/``value``, ``attention.output``, ``intermediate``, ``output``), self-attention
only: BERT, RoBERTa, XLM-RoBERTa (e.g. ``BAAI/bge-reranker-v2-m3``), ELECTRA, CamemBERT and the
e5 family. Anything else keeps the stock forward. On a GPU the padded batch is already cheap
(one kernel for all pairs), so this is a CPU path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

# self-attention classes whose forward is plain scaled-dot-product attention over
# query/key/value projections (no relative positions, no rotary embeddings)
_SELF_ATTENTION = frozenset(
    {
        "BertSelfAttention",
        "RobertaSelfAttention",
        "XLMRobertaSelfAttention",
        "ElectraSelfAttention",
        "CamembertSelfAttention",
        "XLMRobertaXLSelfAttention",
    }
)


def pack_encoder(model: torch.nn.Module) -> bool:
    """Make ``model``'s encoder skip padding (in place); False when its layout is not known.

    ``model`` is a sequence-classification model (``BertForSequenceClassification`` & co.); it
    is called exactly as before.
    """
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    encoder = getattr(base, "encoder", None) if isinstance(base, torch.nn.Module) else None
    if isinstance(encoder, PackedEncoder):
        return True
    if not isinstance(encoder, torch.nn.Module) or not _known_layers(encoder, getattr(model, "config", None)):
        return False
    assert isinstance(base, torch.nn.Module)
    packed = PackedEncoder(encoder)
    packed.train(encoder.training)  # a new module starts in training mode
    base.encoder = packed
    base.register_forward_pre_hook(packed.layout.before_forward, with_kwargs=True)
    base.register_forward_hook(packed.layout.after_forward)
    return True


def packed_encoder(model: torch.nn.Module) -> PackedEncoder | None:
    """The model's packed encoder, if :func:`pack_encoder` installed one."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    encoder = getattr(base, "encoder", None)
    return encoder if isinstance(encoder, PackedEncoder) else None


def _known_layers(encoder: torch.nn.Module, config: Any) -> bool:
    if config is not None and (
        getattr(config, "is_decoder", False)
        or getattr(config, "add_cross_attention", False)
        or getattr(config, "chunk_size_feed_forward", 0)
    ):
        return False
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        return False
    for layer in layers:
        attention = getattr(layer, "attention", None)
        self_attention = getattr(attention, "self", None)
        if type(self_attention).__name__ not in _SELF_ATTENTION:
            return False
        if not all(
            hasattr(self_attention, name)
            for name in ("query", "key", "value", "num_attention_heads", "attention_head_size", "scaling")
        ):
            return False
        if not all(
            isinstance(getattr(layer, name, None), torch.nn.Module) for name in ("intermediate", "output")
        ) or not hasattr(attention, "output"):
            return False
    return True


class _Layout(threading.local):
    """The current call's 2-D attention mask (per thread), read by a pre-hook on the base model."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), ()

    def before_forward(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]  # forward(input_ids, attention_mask, ...)
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def after_forward(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.mask = None


class PackedEncoder(torch.nn.Module):
    """Runs the wrapped encoder's layers on real tokens only (see the module docstring)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = encoder
        self.layout = _Layout()
        # told the kept positions (flattened [batch * width] bool) before the layers run, so
        # per-row state computed on the padded layout (int8's float32 rows) can follow
        self._listeners: list[Callable[[torch.Tensor], None]] = []

    def add_listener(self, listener: Callable[[torch.Tensor], None]) -> None:
        self._listeners.append(listener)

    @property
    def layer(self) -> Any:
        return self.inner.layer

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        mask = self.layout.mask
        keep = None
        if (
            mask is not None
            and mask.shape == hidden_states.shape[:2]
            and not self.inner.training
            and not args
            and kwargs.get("encoder_hidden_states") is None
        ):
            keep = mask.to(torch.bool)
        # only right padding: with left padding the head's first position is a pad, whose
        # (meaningless) stock output the head would read; keep the stock forward for that
        if keep is None or bool(keep.all()) or not bool((keep[:, 1:] <= keep[:, :-1]).all()):
            return self.inner(hidden_states, attention_mask, *args, **kwargs)
        from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions as Output

        lengths = keep.sum(1).tolist()
        flat_keep = keep.flatten()
        for listener in self._listeners:
            listener(flat_keep)
        x = hidden_states[keep]  # [tokens, hidden], pair after pair
        for layer in self.layer:
            x = _layer(layer, x, lengths)
        out = hidden_states.new_zeros(hidden_states.shape)
        out[keep] = x
        return Output(last_hidden_state=out)  # what the stock encoder returns


def _layer(layer: Any, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    attention = layer.attention
    sa = attention.self
    heads, size = sa.num_attention_heads, sa.attention_head_size
    q, k, v = sa.query(x), sa.key(x), sa.value(x)
    context = torch.empty_like(q)
    start = 0
    for n in lengths:
        if n:
            part = slice(start, start + n)
            # [1, heads, n, size] views (4-D: torch's fused CPU kernel; 3-D falls back to the
            # slower math path); one pair, no padding, so no mask
            out = F.scaled_dot_product_attention(
                _heads(q[part], n, heads, size),
                _heads(k[part], n, heads, size),
                _heads(v[part], n, heads, size),
                scale=sa.scaling,
            )
            context[part] = out[0].transpose(0, 1).reshape(n, heads * size)
        start += n
    hidden = attention.output(context, x)
    return layer.output(layer.intermediate(hidden), hidden)


def _heads(rows: torch.Tensor, n: int, heads: int, size: int) -> torch.Tensor:
    return rows.view(1, n, heads, size).transpose(1, 2)
