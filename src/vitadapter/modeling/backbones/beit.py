"""BEiT ViT blocks: per-block relative position bias, layer scale, q/v bias."""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import Linear, activated, attention, fast_inference, linear, use_reference
from ...ops.self_attention import LOG2E, explicit_attention
from ..layers import add_mlp_residual, add_residual, cached_constant, maybe_checkpoint, transposed


def num_relative_distances(window: tuple[int, int]) -> int:
    """Rows of a relative position table: all patch offsets plus cls->token, token->cls,
    cls->cls."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) + 3


def relative_position_index(window: tuple[int, int],
                            device: torch.device | str | None = None) -> torch.Tensor:
    """The ``(N+1, N+1)`` table index of BEiT for a ``window`` of N patches plus the cls token.

    Patch pairs map to ``(dy + Wh - 1) * (2Ww - 1) + (dx + Ww - 1)``; row 0 (cls -> token),
    column 0 (token -> cls) and [0, 0] use the last three table rows. Derived data, cached once
    per window and device and shared by every block (24 private copies cost ~1.9 GB at 896).
    """
    return _cached_index(tuple(window), torch.device(device or "cpu"))


@cached_constant(maxsize=8)
def _cached_index(window: tuple[int, int], device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return _cached_index(window, torch.device("cpu")).to(device)
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    total = num_relative_distances(window)
    index = torch.zeros(wh * ww + 1, wh * ww + 1, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, :] = total - 3
    index[:, 0] = total - 2
    index[0, 0] = total - 1
    return index


INDEX_KEY = "relative_position_index"
# Query rows per attention call of the fast path, rounded down to whole window rows (the bias
# rows copied for them take heads x rows x (N+1) floats: 100 MB for 16 heads at 896).
_BIAS_ROWS = 512
# From this many tokens on the CPU the attention computes explicit scores, one head at a time
# in blocks of about this many query rows (see Attention._explicit_scores): 12.6 MB of
# scores at 3137 tokens. Measured on a 2-core Xeon with MKL's products, whole attention
# modules: the fused kernel is faster at 257 tokens (6.5 against 7.2 ms), even at 577, the
# explicit one faster from 901 (the 480 crop; 1.05x) to 3137 (the 896 crop; 1.17x at 1601).
# One head per product ran 1.2x faster than all 16 heads of 112 rows (BEiT-L at 896: 322
# against 392 ms per layer). oneDNN's products (ops.linear) run the two products of a head
# 1.3-1.9x faster again on a 2-core AMD EPYC (q k^T at 3137 tokens: 141 against 73 GFLOP/s).
_EXPLICIT_TOKENS = 800
_SCORE_ROWS = 1024
_scratch = threading.local()


def _bias_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer of at least ``numel`` elements for the bias rows, kept per thread on the CPU
    and shared by the blocks: a fresh one per block costs page faults at every first touch
    (4 % of a BEiT-B crop). GPU memory is reused by PyTorch's allocator anyway."""
    if device.type != "cpu" or torch.compiler.is_compiling():
        return torch.empty(numel, dtype=dtype, device=device)
    buffer = getattr(_scratch, "bias", None)
    # (One made in inference mode cannot be written outside it.)
    if (buffer is None or buffer.numel() < numel or buffer.dtype != dtype
            or (buffer.is_inference() and not torch.is_inference_mode_enabled())):
        buffer = _scratch.bias = torch.empty(numel, dtype=dtype, device=device)
    return buffer


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        # Contiguous tokens: a transposed view would make every later elementwise op and
        # LayerNorm of a plain ViT (which has no cls-token concatenation) run strided and keep
        # that layout (25x slower at width 1024).
        return transposed(x.flatten(2)), height, width


class Attention(nn.Module):
    """Global self-attention with q/v bias (no k bias) and a relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int], qkv_bias: bool,
                 use_rel_pos_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.window = window
        self.qkv: nn.Linear = Linear(dim, dim * 3, bias=False)  # int8 may swap it
        self.q_bias: nn.Parameter | None
        self.v_bias: nn.Parameter | None
        self.relative_position_bias_table: nn.Parameter | None
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        if use_rel_pos_bias:
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(num_relative_distances(window), num_heads))
        else:
            self.relative_position_bias_table = None
        self.proj = Linear(dim, dim)

    def relative_position_bias(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """The bias of every head, ``(heads, N+1, N+1)``, gathered contiguously from the
        transposed table (no permuted copy of the N^2 x heads gather) with ``index`` (default:
        the window's shared :func:`relative_position_index`)."""
        table = self.relative_position_bias_table
        if table is None:
            raise ValueError("this block has no relative position bias")
        if index is None:
            index = relative_position_index(self.window, table.device)
        tokens = index.shape[0]
        return table.t().index_select(1, index.view(-1)).view(-1, tokens, tokens)

    # The official state dict holds the index as a buffer ``relative_position_index``; it is
    # derived from the window, so it is produced on save (our state dict equals the official
    # one) and checked and dropped on load by :func:`~..segmentor.checkpoint_filter`.
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.relative_position_bias_table is not None:
            destination[prefix + INDEX_KEY] = relative_position_index(self.window)

    def qkv_bias(self) -> torch.Tensor | None:
        """The (q, 0, v) bias of the fused qkv projection (BEiT has no k bias)."""
        if self.q_bias is None or self.v_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = self.qkv_bias()
        qkv = self.qkv(x) if bias is None else linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        table = self.relative_position_bias_table
        if use_reference():
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if table is not None:
                attn = attn + self.relative_position_bias().unsqueeze(0)
            x = attn.softmax(dim=-1) @ v
        elif table is None:
            x = attention(q, k, v, scale=self.scale)
        elif torch.is_grad_enabled() and table.requires_grad:
            mask = self.relative_position_bias().unsqueeze(0).to(q.dtype)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            x = self._attend_in_row_blocks(q, k, v, table)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))

    def _attend_in_row_blocks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              table: torch.Tensor) -> torch.Tensor:
        """SDPA over blocks of query rows, each with its rows of the bias copied into one
        reused buffer: (heads, rows, N+1) instead of the whole (heads, N+1, N+1) bias (630 MB
        at 896, whose fresh pages cost the kernel more time than building it).

        No gather: with the table's patch-offset rows as a ``(2Wh-1, 2Ww-1)`` grid flipped on
        both axes, the bias row of patch query ``N-1-p'`` (``p' = (y', x')`` on the window) is
        the ``Wh x Ww`` window of that grid at ``(y', x')``; all of them are one strided view,
        copied a block of ``y'`` rows at a time. The patch queries therefore run in reverse
        order (each row's attention is independent of the others); the cls query, whose row is
        two table entries, runs on its own.
        """
        heads, (wh, ww) = self.num_heads, self.window
        patches = wh * ww
        tokens = patches + 1
        table = table.t().to(q.dtype)  # (heads, rows of the table)
        grid = table[:, :-3].reshape(heads, 2 * wh - 1, 2 * ww - 1).flip(1, 2).contiguous()
        to_patch, from_cls, cls_to_cls = table[:, -3], table[:, -2], table[:, -1]
        out = torch.empty_like(q)
        cls_mask = torch.cat((cls_to_cls[:, None], to_patch[:, None].expand(-1, patches)), 1)
        out[:, :, :1] = F.scaled_dot_product_attention(
            q[:, :, :1], k, v, scale=self.scale, attn_mask=cls_mask.view(1, heads, 1, tokens))
        # Long sequences on the CPU: explicit scores per head and block, the bias added from the
        # strided view directly (no mask copy).
        reversed_q = q[:, :, 1:].flip(2)
        if tokens >= _EXPLICIT_TOKENS and q.device.type == "cpu" and fast_inference():
            # In base 2 (explicit_attention's contract): log2(e) on the queries and the bias.
            reversed_out = self._explicit_scores(reversed_q.mul_(self.scale * LOG2E), k, v,
                                                 self._windows(grid * LOG2E), from_cls * LOG2E)
        else:
            windows = self._windows(grid)
            reversed_out = torch.empty_like(reversed_q)
            lines = max(1, _BIAS_ROWS // ww)  # window rows per block
            buffer = _bias_buffer(heads * lines * ww * tokens, q.dtype, q.device)
            for first in range(0, wh, lines):
                count = min(lines, wh - first)
                rows = slice(first * ww, (first + count) * ww)
                block = buffer[:heads * count * ww * tokens].view(1, heads, count * ww, tokens)
                block[..., 0] = from_cls[:, None]
                block[..., 1:].unflatten(3, (wh, ww)).unflatten(2, (count, ww)).copy_(
                    windows[:, first:first + count])
                reversed_out[:, :, rows] = F.scaled_dot_product_attention(
                    reversed_q[:, :, rows], k, v, scale=self.scale, attn_mask=block)
        out[:, :, 1:] = reversed_out.flip(2)
        return out

    def _windows(self, grid: torch.Tensor) -> torch.Tensor:
        """The (heads, Wh, Ww, Wh, Ww) strided view of the flipped bias ``grid`` (heads,
        2Wh-1, 2Ww-1) whose [:, y', x'] is the bias row of patch query ``N-1-p'``."""
        wh, ww = self.window
        return grid.as_strided((grid.shape[0], wh, ww, wh, ww),
                               (grid.stride(0), 2 * ww - 1, 1, 2 * ww - 1, 1))

    def _explicit_scores(self, reversed_q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         windows: torch.Tensor, from_cls: torch.Tensor) -> torch.Tensor:
        """The patch queries' attention (``reversed_q`` scaled, in reverse order, and all in
        base 2) as explicit scores (:func:`~vitadapter.ops.self_attention.explicit_attention`),
        in blocks of whole window rows, each block's bias added from the strided ``windows``
        view."""
        wh, ww = self.window

        def add_bias(scores: torch.Tensor, head: int, rows: slice) -> None:
            first, count = rows.start // ww, scores.shape[0] // ww
            scores[:, 0].add_(from_cls[head])
            scores[:, 1:].unflatten(1, (wh, ww)).unflatten(0, (count, ww)).add_(
                windows[head, first:first + count])

        return explicit_attention(reversed_q, k, v, max(1, _SCORE_ROWS // ww) * ww, add_bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activated(self.fc1, x, "gelu"))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random ``rate`` share of the
    samples and scale the others by ``1 / (1 - rate)``; identity in eval mode."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class Block(nn.Module):
    """Pre-norm transformer block with optional layer scale (``gamma_1``/``gamma_2``);
    ``with_cp``: gradient checkpointing in training (``set_grad_checkpointing``)."""

    with_cp = False

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: tuple[int, int],
                 qkv_bias: bool, use_rel_pos_bias: bool, init_values: float | None,
                 eps: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.drop_path = DropPath(drop_path)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, window, qkv_bias, use_rel_pos_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1: nn.Parameter | None
        self.gamma_2: nn.Parameter | None
        if init_values is not None and init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self.with_cp, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_inference() and not self.training:
            x = add_residual(x, self.attn(self.norm1(x)), self.gamma_1)
            return add_mlp_residual(x, self.norm2, self.mlp, self.gamma_2)
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
