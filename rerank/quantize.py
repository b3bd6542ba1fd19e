"""Faster CPU inference: int8 linear layers with per-token activation scales.

Which layers: the ``nn.Linear`` layers of the encoder's transformer layers that read the
hidden states: attention query, key and value, and the FFN input ``intermediate.dense`` (2/3
of a layer's multiply-adds). The two projections that write back into the residual stream
(children of an ``output`` module: ``attention.output.dense`` and the FFN's ``output.dense``;
ModernBERT's ``Wo``) stay float32: their rounding goes straight into every later layer, and
their inputs (attention context, GELU output) carry the outlier channels. On a 6-layer
reranker trained by tansaku (xsmall's size) that costs part of int8's gain (2.6x -> 2.1x
CrossEncoder.predict) and cuts the max score difference from 0.039 to 0.011 (either one alone:
0.025 / 0.037). The embeddings, LayerNorms, the pooler and the classification head stay
float32: the pooler and head run on one vector per pair (nothing to gain) and the head
amplifies any error.

Why not plain ``torch.ao.quantization.quantize_dynamic``: it quantises each layer's whole input
batch with one scale (per tensor). BERT/XLM-R-family encoders (e5 included) have "massive
activations": the start and separator tokens (``<s>``/``</s>``, ``[CLS]``/``[SEP]``) carry a
few channels 10-50x larger than any other token's (up to 55 against a median of ~1.5 at the FFN
output's input in a 12-layer e5-small reranker), so one scale for the batch rounds every
ordinary token to a handful of levels; and those tokens are attention sinks, whose value
vectors must stay almost exactly zero, so any rounding there is added to every token's
attention output. On an e5-small reranker trained by tansaku that path moved scores by up to
0.985 (sigmoid scale). One kind of layer at a time (per-tensor, 12 layers each): FFN output
0.98, FFN input 0.23, value 0.13, query 0.03, attention output 0.02, key 0.01.

What this module does instead, for each quantised layer:

- weights: int8, one scale per output channel (symmetric);
- activations: each token (row) is divided by its own absolute maximum before fbgemm's dynamic
  int8 kernel and the output row multiplied back (``linear(x / r) * r == linear(x)``), which
  gives every token its own quantisation scale: per-token quantisation on the stock kernel;
- the first and last real token of each sequence, segment boundaries and the tokens whose ids
  are the config's bos/eos/sep/cls ids (the attention sinks) are computed in float32 from the
  float32 weights (a few percent of the rows). The rows come from the encoder's
  ``input_ids`` (and follow tansaku's padding-free layers, see packing.py); a model called
  without them, or one that drops padding some other way (rows != batch x length), runs
  every row in int8 and loses that accuracy.

The float32 weights are kept for those rows (memory: the int8 copy comes on top).

Measured on the 100 JSQuAD pairs of ``scripts/bench_rerank.py`` (max |score difference| from
float32, sigmoid scale), per-tensor -> per-token with every per-token layer in int8: a 12-layer
reranker trained by tansaku 0.985 -> 0.02-0.04; the bench's xsmall model (random head) 0.999 ->
~0.07, a model so sensitive that rounding only its weights to bfloat16 moves its scores by
0.04. With the residual projections in float32 as now: a 6-layer reranker trained by tansaku
0.039 -> 0.011 at 2.1x CrossEncoder.predict (~1.3x tansaku's padding-free float32 path); a
12-layer one 0.138 -> 0.070 (mean 0.0055 -> 0.0028); the random-head model 0.065. See README.md.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F

from tansaku.index.errors import ConfigError

from .packing import packed_encoder

Quantize = Literal["none", "int8"]
QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8")

# modules that run once per pair, not per token: left in float32 (when the model has no
# separate encoder, the classification head sits beside the layers)
_HEAD_NAMES = frozenset({"pooler", "classifier", "pre_classifier", "score", "head", "lm_head"})

# Linear layers that project back into the residual stream, left in float32 (see the module
# docstring): in the BERT layout every Linear of a module named "output" (BertSelfOutput,
# BertOutput); elsewhere the usual names of the attention-output and FFN-output projections
# (ModernBERT's Wo, o_proj/out_proj, down_proj, fc2)
_RESIDUAL_WRITER_PARENTS = frozenset({"output"})
_RESIDUAL_WRITER_NAMES = frozenset({"Wo", "o_proj", "out_proj", "down_proj", "fc2"})

# config attributes naming the special tokens that act as attention sinks (pad is not one:
# padded positions are masked out and their outputs unused)
_SPECIAL_ID_FIELDS = ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")


def check_quantize(quantize: str, device: str, fp16: bool) -> None:
    """Refuse combinations that cannot work, naming the option."""
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if quantize == "int8" and (torch.device(device).type != "cpu" or fp16):
        raise ConfigError(
            "quantize='int8' is a CPU path: use it with device='cpu' and without fp16 "
            "(on a GPU, fp16 is the fast path)"
        )


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model (changed in place) with its encoder's per-token ``nn.Linear`` layers in int8.

    See the module docstring for which layers and why. The model must be float32 on the CPU
    and in eval mode; it is called as before (``model(input_ids=..., attention_mask=...)``).
    """
    prefix = getattr(model, "base_model_prefix", "")
    encoder = getattr(model, prefix, None) if prefix else None
    target = encoder if isinstance(encoder, torch.nn.Module) else model
    state = _TokenRows.for_encoder(target, _special_token_ids(getattr(model, "config", None)))
    replaced = 0
    for parent_name, parent in list(target.named_modules()):
        if _HEAD_NAMES.intersection(parent_name.split(".")):
            continue
        if parent_name.rsplit(".", 1)[-1] in _RESIDUAL_WRITER_PARENTS:
            continue
        for name, child in list(parent.named_children()):
            if (
                type(child) is torch.nn.Linear
                and name not in _HEAD_NAMES
                and name not in _RESIDUAL_WRITER_NAMES
            ):
                setattr(parent, name, TokenScaledInt8Linear(child, state, group=id(parent)))
                replaced += 1
    if replaced:
        state.attach(target)
        packed = packed_encoder(model)
        if packed is not None:  # the layers see only real tokens: follow them to the sink rows
            packed.add_listener(state.repack)
    return model


def _special_token_ids(config: Any) -> torch.Tensor:
    ids = {getattr(config, field, None) for field in _SPECIAL_ID_FIELDS}
    pad = getattr(config, "pad_token_id", None)
    return torch.tensor(
        sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != pad), dtype=torch.long
    )


class _TokenRows(threading.local):
    """Per forward call (and per thread): which flattened token rows run in float32.

    Filled by a forward pre-hook on the encoder from its ``input_ids`` / ``attention_mask`` /
    ``token_type_ids``, cleared when the encoder returns. Also holds the scratch buffer for
    scaled inputs and the last prepared input, shared by sibling layers (query, key and value
    read the same hidden states). Attributes set in ``__init__`` exist in every thread (a
    ``threading.local`` runs it again per thread); the hooks are bound methods, so a deep copy
    of the model gets hooks and layers that share the copied state.
    """

    def __init__(self, special_ids: torch.Tensor, positions: dict[str, int] | None = None) -> None:
        self.special_ids = special_ids
        self.positions = dict(positions or {})
        self.clear()

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.special_ids, self.positions)

    @classmethod
    def for_encoder(cls, encoder: torch.nn.Module, special_ids: torch.Tensor) -> _TokenRows:
        params = list(inspect.signature(encoder.forward).parameters)
        names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
        positions = {name: params.index(name) for name in names if name in params}
        return cls(special_ids, positions)

    def clear(self) -> None:
        self.sink: torch.Tensor | None = None  # flattened [batch * width] bool
        self.rows: torch.Tensor | None = None
        self.n_rows = -1
        self.scratch: torch.Tensor | None = None
        self.prepared: tuple[Any, ...] | None = None

    def attach(self, encoder: torch.nn.Module) -> None:
        encoder.register_forward_pre_hook(self.before_forward, with_kwargs=True)
        encoder.register_forward_hook(self.after_forward)

    def _argument(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name in kwargs:
            return kwargs[name]
        position = self.positions.get(name)
        return args[position] if position is not None and position < len(args) else None

    def before_forward(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.clear()
        input_ids = self._argument("input_ids", args, kwargs)
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
            self.sink = self.sink_rows(
                input_ids,
                self._argument("attention_mask", args, kwargs),
                self._argument("token_type_ids", args, kwargs),
            )
            self.rows = self.sink.nonzero().flatten()
            self.n_rows = input_ids.numel()

    def repack(self, keep: torch.Tensor) -> None:
        """The layers will run on the rows ``keep`` selects (padding dropped, see packing.py)."""
        if self.sink is not None and self.sink.shape == keep.shape:
            self.rows = self.sink[keep].nonzero().flatten()
            self.n_rows = int(keep.sum())

    def after_forward(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.clear()  # nothing from this batch outlives the call (memory, stale rows)

    def sink_rows(self, input_ids: torch.Tensor, attention_mask: Any, token_type_ids: Any) -> torch.Tensor:
        batch, width = input_ids.shape
        if isinstance(attention_mask, torch.Tensor) and attention_mask.shape == input_ids.shape:
            real = attention_mask.to(torch.bool)
        else:
            real = torch.ones_like(input_ids, dtype=torch.bool)
        sink = torch.isin(input_ids, self.special_ids.to(input_ids.device))
        index = torch.arange(batch, device=input_ids.device)
        # the first and last real token (either padding side): [CLS]/<s> and the final [SEP]
        sink[index, real.to(torch.int8).argmax(1)] = True
        sink[index, width - 1 - real.flip(1).to(torch.int8).argmax(1)] = True
        if isinstance(token_type_ids, torch.Tensor) and token_type_ids.shape == input_ids.shape:
            # the [SEP] ending the first segment, for configs that do not name its id
            sink[:, :-1] |= token_type_ids[:, 1:] != token_type_ids[:, :-1]
        return (sink & real).flatten()

    def buffer(self, numel: int) -> torch.Tensor:
        if self.scratch is None or self.scratch.numel() < numel:
            self.scratch = torch.empty(numel)
        return self.scratch[:numel]


class TokenScaledInt8Linear(torch.nn.Module):
    """``nn.Linear`` with int8 per-channel weights and per-token int8 activations (CPU).

    Sink-token rows (see ``_TokenRows``) are computed in float32 with the original weights.
    """

    def __init__(self, linear: torch.nn.Linear, state: _TokenRows, group: int = 0) -> None:
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams

        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            # torch.ao.quantization announces its move to torchao; the eager ops still work
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(
                weight, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8
            )
            self._packed = LinearPackedParams(dtype=torch.qint8)
            self._packed.set_weight_bias(qweight, None)  # bias added after the row rescale
        self.weight = linear.weight  # float32, for the sink-token rows
        self.bias = linear.bias
        self._state = state
        self._group = group

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-token"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._state
        rows2d = x.reshape(-1, x.shape[-1])
        rows = state.rows if rows2d.shape[0] == state.n_rows else None
        prepared = state.prepared
        if prepared is not None and prepared[0] is x and prepared[1] == self._group:
            _, _, scaled, row_max, sink_in = prepared  # a sibling already scaled this input
        else:
            # per-token scale: max |x| of each row (amax/amin: no |x| temporary)
            row_max = torch.maximum(rows2d.amax(1, keepdim=True), rows2d.amin(1, keepdim=True).neg_())
            row_max.clamp_min_(1e-12)
            scaled = torch.div(rows2d, row_max, out=state.buffer(rows2d.numel()).view_as(rows2d))
            sink_in = rows2d.index_select(0, rows) if rows is not None and rows.numel() else None
            state.prepared = (x, self._group, scaled, row_max, sink_in)
        # reduce_range: 7-bit activations, so fbgemm's int16 pair sums cannot saturate on
        # fbgemm's u8 x s8 kernels (8-bit ones measured worse: 0.034 instead of 0.022 on the trained reranker)
        out = torch.ops.quantized.linear_dynamic(scaled, self._packed._packed_params, reduce_range=True)
        if self.bias is not None:
            torch.addcmul(self.bias, out, row_max, out=out)
        else:
            out.mul_(row_max)
        if sink_in is not None:
            out.index_copy_(0, rows, F.linear(sink_in, self.weight, self.bias))
        return out.view(*x.shape[:-1], self.out_features)
