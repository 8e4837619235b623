"""Numeric precision of the PyTorch backend: fp32 (default), autocast bf16/fp16, int8 Linear.

Deformable-attention sampling always runs in float32 (the op upcasts), so reduced precision
only touches the matrix products, convolutions and attention.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ..config.schema import PRECISIONS, Precision
from ..errors import ConfigError
from ..modeling.backbones.beit import Attention


def check_precision(precision: str, device: str | torch.device) -> Precision:
    """Validate ``precision`` for ``device``, with the reason and the alternative if not."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of "
                          + ", ".join(PRECISIONS))
    kind = torch.device(device).type
    if precision == "fp16" and kind != "cuda":
        raise ConfigError("precision 'fp16' needs a CUDA device (CPUs have no fast fp16 "
                          "matrix products); on the CPU use 'bf16' or 'int8'")
    if precision == "int8" and kind != "cpu":
        raise ConfigError("precision 'int8' (dynamic quantisation of Linear layers) runs on "
                          "the CPU only; on CUDA use 'bf16' or 'fp16'")
    return precision  # type: ignore[return-value]


def prepare_model(model: nn.Module, precision: Precision, inplace: bool = False) -> nn.Module:
    """For ``int8``, the model with its Linear layers quantised (a copy unless ``inplace``);
    other precisions return ``model`` itself."""
    if precision != "int8":
        return model
    if not inplace:
        model = copy.deepcopy(model)
    _fold_qv_bias(model)
    with warnings.catch_warnings():
        # torch.ao's dynamic quantisation is deprecated in favour of torchao, still works.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8,
                                                       inplace=True)


def _fold_qv_bias(model: nn.Module) -> None:
    """Give BEiT's bias-free ``qkv`` Linear layers the (q, 0, v) bias as their own, so that the
    quantised module applies it (a quantised Linear exposes no float weight to add it with)."""
    for attn in model.modules():
        if not isinstance(attn, Attention):
            continue
        bias = attn.qkv_bias()
        if bias is None:
            continue
        qkv = attn.qkv
        folded = nn.Linear(qkv.in_features, qkv.out_features, device=qkv.weight.device,
                           dtype=qkv.weight.dtype)
        folded.weight = qkv.weight
        folded.bias = nn.Parameter(bias.detach())
        attn.qkv = folded
        attn.q_bias = attn.v_bias = None


def autocast(precision: Precision,
             device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The numeric context of ``precision``: autocast for bf16/fp16; for fp32 on CUDA, cuDNN
    convolutions without TF32 (PyTorch's default rounds their inputs to 10 mantissa bits,
    which would leave the parity tolerance); nothing otherwise."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    if device.type == "cuda":
        return _without_tf32_convolutions()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _without_tf32_convolutions() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved
