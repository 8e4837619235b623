"""Matrix products of the fast inference path through oneDNN on the CPU.

PyTorch sends a float32 ``F.linear`` on the CPU to MKL's sgemm. oneDNN's matmul (PyTorch's
``mkldnn::_linear_pointwise``, which its own compiler uses) runs the shapes of these models
faster on the AMD EPYC (Zen 5, AVX-512) of benchmarks/README.md: 1.1-1.4x on the ViT and
decoder layers, 1.6-1.8x on the class product of a crop's scores (K = 100 queries); and it
applies the bias and a GELU or ReLU in the product's epilogue, while the rows are still in
cache, instead of in passes of their own. Same float32 arithmetic, a different summation order:
results differ in the last bits. ``VITADAPTER_MATMUL=mkl`` in the environment keeps PyTorch's
own products (measured only on that EPYC: check another CPU with ``benchmarks/roofline.py``).
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import fast_inference

Activation = Literal["gelu", "relu"] | None

ENV = "VITADAPTER_MATMUL"


def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's matmul operator and ``$VITADAPTER_MATMUL`` does not
    ask for PyTorch's own products (``mkl``); read once, at import."""
    choice = os.environ.get(ENV, "onednn").strip().lower()
    if choice not in ("onednn", "mkl"):
        warnings.warn(f"{ENV}={choice!r} is not a choice: 'onednn' (the default) or 'mkl'; "
                      "using oneDNN", stacklevel=2)
    return (choice != "mkl" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


_ONEDNN = onednn_available()


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where :func:`linear` runs on oneDNN: float32 CPU tensors on the fast inference path
    (no autograd, no reference path, no tracing), outside autocast."""
    return (_ONEDNN and fast_inference() and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: Activation = None) -> torch.Tensor:
    """``activation(F.linear(x, weight, bias))``: one oneDNN product with its epilogue where
    :func:`onednn_applies`, PyTorch's operators otherwise."""
    if onednn_applies(x, weight):
        if not (weight.is_contiguous() or weight.t().is_contiguous()):
            # oneDNN runs a weight of other strides (a head's slice of a fused projection)
            # with its reference code: 600x slower than the copy.
            weight = weight.contiguous()
        # oneDNN's GELU is the exact (erf) one, as F.gelu's default.
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation or "none", [],
                                                   "none" if activation == "gelu" else "")
    return fresh_activation(F.linear(x, weight, bias), activation)


def fresh_activation(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    """The activation of a tensor nothing else holds (a fresh product): in place where
    :func:`fast_inference` (a fresh temporary of the size of the MLP activations, 51 MB per
    BEiT-L block at 896, costs page faults)."""
    if activation is None:
        return x
    if fast_inference():
        return torch.ops.aten.gelu_(x) if activation == "gelu" else torch.relu_(x)
    return F.gelu(x) if activation == "gelu" else F.relu(x)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose product goes through
    :func:`linear`, with an optional activation fused into it."""

    def forward(self, x: torch.Tensor, activation: Activation = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation)


def activated(layer: nn.Module, x: torch.Tensor, activation: Activation) -> torch.Tensor:
    """``activation(layer(x))``: fused into the product where ``layer`` is a :class:`Linear`,
    after it for any other layer (an int8 quantised one)."""
    if isinstance(layer, Linear):
        return layer(x, activation)
    return fresh_activation(layer(x), activation)


def matmul_nt(a: torch.Tensor, b: torch.Tensor,
              row_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.transpose(-2, -1)`` (+ ``row_bias[:, None]``) of (B, M, K) and (B, N, K), either
    possibly expanded: a oneDNN product per sample where :func:`onednn_applies` (1.4-1.9x MKL's
    batched product at the 1x1 convolutions and mask products of these heads), ``torch``'s
    batched product otherwise."""
    if onednn_applies(a, b):
        products = [linear(x, w) for x, w in zip(a, b, strict=True)]
        out = products[0].unsqueeze(0) if len(products) == 1 else torch.stack(products)
        return out if row_bias is None else out.add_(row_bias.view(-1, 1))
    if row_bias is None:
        return torch.matmul(a, b.transpose(-2, -1))
    return torch.baddbmm(row_bias.view(1, -1, 1), a, b.transpose(-2, -1))
