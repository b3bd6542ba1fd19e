"""Faster CPU inference: dynamic int8 quantisation of a model's linear layers."""

from __future__ import annotations

import warnings
from typing import Literal

import torch

from tansaku.index.errors import ConfigError

Quantize = Literal["none", "int8"]
QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8")


def check_quantize(quantize: str, device: str, fp16: bool) -> None:
    """Refuse combinations that cannot work, naming the option."""
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if quantize == "int8" and (torch.device(device).type != "cpu" or fp16):
        raise ConfigError("quantize='int8' is a CPU path: use it with device='cpu' and without fp16 "
                          "(on a GPU, fp16 is the fast path)")


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with the encoder's ``nn.Linear`` layers dynamically quantised to int8.

    Weights are stored in int8 and activations quantised per batch, so attention and FFN
    matrix products run on int8 kernels; embeddings, LayerNorms and the classification head
    stay float32 (the head is one small matrix, and it would amplify quantisation noise).
    """
    from torch.ao.quantization import quantize_dynamic

    prefix = getattr(model, "base_model_prefix", "")
    encoder = getattr(model, prefix, None) if prefix else None
    target = encoder if isinstance(encoder, torch.nn.Module) else model
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager API still works
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(target, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
