"""Self-attention without a mask on the fast inference path: explicit scores through oneDNN.

PyTorch's fused CPU attention (``F.scaled_dot_product_attention``) runs its blocks of q k^T and
of the attention times v on MKL's sgemm, which takes its AVX2 code on AMD CPUs: 130-146
GFLOP/s on a 2-core Zen 5 whose oneDNN matmul reaches 420. Explicit scores of one head at a
time, a few MB of rows per block (in cache for the softmax and the second product), with both
products on oneDNN (:func:`~vitadapter.ops.linear`), ran 1.4-1.8x faster there from 577 tokens
on (DINOv3 and plain ViTs at a 512 crop: 1029 tokens, 136 -> 210 GFLOP/s; 3141 tokens at 896:
138 -> 244); at 257 tokens the fused kernel stays faster. Same arithmetic up to the summation
order (the fused kernel's running softmax against one softmax per row): within 1e-6 here.

The softmax is taken in base 2: the scores arrive multiplied by log2(e) (folded into the
scaled queries and the bias), become ``exp2`` in place and are summed, and the division by the
sum is left to the (rows, D) result. PyTorch's ``exp2`` runs 3.6x faster than its ``exp``
on that CPU; per 1 M scores 0.16 against 0.26 ms for ``softmax``. Without the row maximum
subtracted first: a block whose sums leave [2^-60, 2^100] (an overflow, or every score of a
row far below zero) is computed again with it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .products import linear, onednn_applies

# Explicit scores from this many tokens on; fewer go to the fused kernel.
EXPLICIT_TOKENS = 512
# Score elements per block of query rows (4 MB of float32): the fastest of 0.5-4 M measured at
# 1029 and 3141 tokens.
_BLOCK_SCORES = 1 << 20
# exp(x) = 2^(x log2(e)): the factor on the scores for the base-2 softmax.
LOG2E = 1.0 / math.log(2.0)
# Row sums of exp2 within these bounds need no shift by the row maximum (the terms then stay
# far from overflow, and a row's terms below 2^-126 weigh less than 2^-66 of its sum).
_SUM_RANGE = (2.0 ** -60, 2.0 ** 100)


# Adds a bias to a block of scores in place: (scores (rows, N), head, the block's query rows).
ScoreBias = Callable[[torch.Tensor, int, slice], object]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              scale: float | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` of (B, heads, N, D) tensors (``scale``: D^-0.5 unless
    given), as ``F.scaled_dot_product_attention`` without a mask. The result is a (B, heads,
    N, D) view of a (B, N, heads, D) tensor, so that merging the heads afterwards is free."""
    tokens, keys = q.shape[-2], k.shape[-2]
    if not (onednn_applies(q, k) and tokens >= EXPLICIT_TOKENS):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # The scale on q (N x D) rather than on the scores (N x N).
    scaled_q = torch.mul(q, scale * LOG2E, out=torch.empty(q.shape, dtype=q.dtype))
    return explicit_attention(scaled_q, k, v, max(1, _BLOCK_SCORES // keys))


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int,
                       add_bias: ScoreBias | None = None) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` of (B, heads, N, D) CPU tensors, ``q`` already scaled by the
    softmax scale times :data:`LOG2E`, and ``add_bias`` (if any) adding the bias times
    :data:`LOG2E`: the scores of one sample, head and ``rows`` query rows at a time, both
    products :func:`~vitadapter.ops.linear`, the bias and the base-2 softmax in place on each
    block. Returned as :func:`attention` does."""
    batch, heads, tokens, _ = q.shape
    # Dense heads: oneDNN runs strided operands with its slow reference code.
    k, v = k.contiguous(), v.contiguous()
    out = torch.empty(batch, tokens, heads, v.shape[-1], dtype=v.dtype)

    def scores_of(head_q: torch.Tensor, head_k: torch.Tensor, head: int,
                  block: slice) -> torch.Tensor:
        scores = linear(head_q, head_k)
        if add_bias is not None:
            add_bias(scores, head, block)
        return scores

    for b, head, first in itertools.product(range(batch), range(heads), range(0, tokens, rows)):
        block = slice(first, min(first + rows, tokens))
        scores = scores_of(q[b, head, block], k[b, head], head, block)
        sums = scores.exp2_().sum(-1, keepdim=True)
        if not (_SUM_RANGE[0] <= sums.min() and sums.max() <= _SUM_RANGE[1]):  # NaN too
            scores = scores_of(q[b, head, block], k[b, head], head, block)
            scores.sub_(scores.amax(-1, keepdim=True))
            sums = scores.exp2_().sum(-1, keepdim=True)
        torch.div(linear(scores, v[b, head].t()), sums, out=out[b, block, head])
    return out.transpose(1, 2)
