"""Numeric precision of the PyTorch backend: fp32 (default), autocast bf16/fp16, int8 Linear.

Deformable-attention sampling always runs in float32 (the op upcasts), so reduced precision
only touches the matrix products, convolutions and attention.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator, Sequence
from fnmatch import fnmatch

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
    if precision == "bf16" and kind == "cpu" and not cpu_has_fast_bf16():
        warnings.warn("precision 'bf16' on this CPU (no AMX tiles) is slower than fp32 and "
                      "changes part of the segmentation (measured: 1.42x slower on AVX512-BF16); "
                      "it is experimental here: use fp32, or int8 for speed", stacklevel=2)
    return precision  # type: ignore[return-value]


def cpu_has_fast_bf16() -> bool:
    """Whether the CPU multiplies bf16 matrices natively fast (AMX tiles): only then can
    bf16 autocast beat fp32 on the CPU."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


# The Linear layers of the network by role (module-name patterns), for choosing what int8
# quantises.
INT8_GROUPS: dict[str, tuple[str, ...]] = {
    "vit-attention": ("backbone.blocks.*.attn.*",),
    "vit-mlp": ("backbone.blocks.*.mlp.*",),
    "adapter": ("backbone.interactions.*",),
    "pixel-decoder": ("decode_head.pixel_decoder.*",),
    "transformer-decoder": ("decode_head.transformer_decoder.*",),
    "prediction-heads": ("decode_head.mask_embed.*", "decode_head.cls_embed"),
}
# Measured one group at a time on the full-size seed model with the recipe weights of
# benchmarks/precision.py: the prediction heads (mask and class embeddings: few FLOPs) alone
# changed 13 % of the labels, each other group 1-3.5 %; only the ViT MLPs kept >= 98 % of the
# labels and >= 99.5 % where fp32's top-2 margin is >= 1e-2, so int8 quantises them alone.
DEFAULT_INT8_GROUPS: tuple[str, ...] = ("vit-mlp",)


def prepare_model(model: nn.Module, precision: Precision, inplace: bool = False,
                  int8_groups: Sequence[str] | None = None) -> nn.Module:
    """For ``int8``, the model with the Linear layers of ``int8_groups`` (default
    :data:`DEFAULT_INT8_GROUPS`) quantised, weights per output channel (a copy unless
    ``inplace``); other precisions return ``model`` itself."""
    if precision != "int8":
        return model
    groups = DEFAULT_INT8_GROUPS if int8_groups is None else tuple(int8_groups)
    unknown = [g for g in groups if g not in INT8_GROUPS]
    if unknown:
        raise ConfigError(f"unknown int8 group(s) {', '.join(unknown)}; choose from "
                          + ", ".join(INT8_GROUPS))
    if not inplace:
        model = copy.deepcopy(model)
    _fold_qv_bias(model)
    patterns = [p for g in groups for p in INT8_GROUPS[g]]
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    chosen = {name: qconfig for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and any(fnmatch(name, p) for p in patterns)}
    _as_plain_linear(model, chosen)
    with warnings.catch_warnings():
        # torch.ao's dynamic quantisation is deprecated in favour of torchao, still works.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, chosen, dtype=torch.qint8,
                                                       inplace=True)


def _as_plain_linear(model: nn.Module, names: Iterable[str]) -> None:
    """Swap the named layers for ``nn.Linear`` layers holding the same parameters: dynamic
    quantisation converts that exact type only (``ops.Linear`` is a subclass)."""
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear) or type(layer) is nn.Linear:
            continue
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device="meta")
        plain.weight, plain.bias = layer.weight, layer.bias
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, plain)


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
