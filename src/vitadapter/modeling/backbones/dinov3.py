"""Meta's DINOv3 ViT (``dinov3.models.vision_transformer.DinoVisionTransformer``): patch 16, a
cls token and register ("storage") tokens, axial RoPE on the patch tokens, LayerScale, a GELU MLP
or SwiGLU, and the k third of the qkv bias masked to zero by a stored ``bias_mask`` buffer.

Module and parameter names are those of Meta's hub checkpoints, so a hub backbone file loads
under ``backbone.`` unchanged; transformers' ``DINOv3ViTModel`` layout (separate q/k/v, no key
bias, no stored RoPE periods) is mapped by :func:`from_transformers` / :func:`to_transformers`,
the state-dict filter of this architecture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...config.schema import BackboneConfig
from ...ops import Linear, attention, fast_inference, linear, use_reference
from ...ops.products import Activation
from ..layers import add_mlp_residual, add_residual, maybe_checkpoint
from .beit import DropPath, Mlp

Rope = tuple[torch.Tensor, torch.Tensor]


def rope_periods(head_dim: int, base: float) -> torch.Tensor:
    """Meta's RoPE periods ``base ** (2i / (head_dim / 2))``, i < head_dim / 4, in float32 (the
    hub checkpoints store exactly these as ``rope_embed.periods``)."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


class RopeEmbedding(nn.Module):
    """Axial rotary embedding of an ``H x W`` patch grid with no learned weights.

    Coordinates are the patch centres normalised to [-1, 1] per axis (Meta's "separate"
    normalisation); in training, ``rescale`` (Meta's ``rescale_coords``) multiplies them by one
    log-uniform factor in ``[1/rescale, rescale]``. Angles ``2 pi coord / period`` of the y then x
    periods, tiled twice to the head width.
    """

    periods: torch.Tensor

    def __init__(self, head_dim: int, base: float, rescale: float | None = None) -> None:
        super().__init__()
        self.rescale = rescale
        periods = torch.empty(head_dim // 4)
        if not periods.is_meta:
            periods = rope_periods(head_dim, base)
        self.register_buffer("periods", periods, persistent=True)

    def forward(self, height: int, width: int) -> Rope:
        """``(sin, cos)``, each ``(H*W, head_dim)`` float32."""
        device = self.periods.device
        coords_h = torch.arange(0.5, height, device=device, dtype=torch.float32) / height
        coords_w = torch.arange(0.5, width, device=device, dtype=torch.float32) / width
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)
        coords = 2.0 * coords.flatten(0, 1) - 1.0
        if self.training and self.rescale is not None:
            limit = math.log(self.rescale)
            coords = coords * torch.empty(1, device=device).uniform_(-limit, limit).exp()
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :].float()
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


def apply_rope(x: torch.Tensor, rope: Rope, prefix: int) -> torch.Tensor:
    """Rotate the patch tokens of ``x`` (B, heads, N, D) in float32, leaving the ``prefix``
    (cls and storage) tokens as they are; returned in ``x``'s dtype."""
    sin, cos = rope
    if fast_inference() and x.dtype == torch.float32:
        return _apply_rope_into(x, sin, cos, prefix)
    patches = x[:, :, prefix:].float()
    first, second = patches.chunk(2, dim=-1)
    rotated = patches * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((x[:, :, :prefix], rotated.to(x.dtype)), dim=2)


def _apply_rope_into(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor,
                     prefix: int) -> torch.Tensor:
    """:func:`apply_rope` written into one fresh tensor (no negated half, no two
    concatenations: four passes over the patches instead of eight)."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out[:, :, :prefix] = x[:, :, :prefix]
    patches, rotated = x[:, :, prefix:], out[:, :, prefix:]
    half = x.shape[-1] // 2
    torch.mul(patches, cos, out=rotated)
    rotated[..., :half].addcmul_(patches[..., half:], sin[..., :half], value=-1)
    rotated[..., half:].addcmul_(patches[..., :half], sin[..., half:])
    return out


class MaskedBiasLinear(Linear):
    """The qkv projection whose bias is multiplied by the stored ``bias_mask`` buffer (Meta's
    ``LinearKMaskedBias``: 1 on the q and v thirds, 0 on the k third)."""

    bias_mask: torch.Tensor

    def __init__(self, dim: int, out: int) -> None:
        super().__init__(dim, out)
        mask = torch.ones(out)
        if not mask.is_meta:
            mask[out // 3:2 * out // 3] = 0
        self.register_buffer("bias_mask", mask, persistent=True)

    def forward(self, x: torch.Tensor, activation: Activation = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias * self.bias_mask.to(self.bias.dtype), activation)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, mask_k_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = (MaskedBiasLinear(dim, 3 * dim) if qkv_bias and mask_k_bias
                    else Linear(dim, 3 * dim, bias=qkv_bias))
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        prefix = tokens - rope[0].shape[0]
        q, k = apply_rope(q, rope, prefix), apply_rope(k, rope, prefix)
        if use_reference():
            x = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        else:
            x = attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)`` with Meta's hidden width: ``int(2/3 * hidden)`` rounded up to a
    multiple of ``align``."""

    def __init__(self, dim: int, hidden: int, align: int) -> None:
        super().__init__()
        width = int(hidden * 2 / 3)
        width += -width % align
        self.w1 = Linear(dim, width)
        self.w2 = Linear(dim, width)
        self.w3 = Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block ``x + ls1(attn(norm1 x))``, ``x + ls2(mlp(norm2 x))``; ``with_cp``:
    gradient checkpointing in training."""

    with_cp = False

    def __init__(self, cfg: BackboneConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        dim = cfg.embed_dim
        hidden = int(dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, cfg.mask_k_bias)
        self.ls1 = LayerScale(dim, cfg.init_values or 0.0)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp: nn.Module = (SwiGLU(dim, hidden, cfg.ffn_align) if cfg.ffn_layer == "swiglu"
                               else Mlp(dim, hidden))
        self.ls2 = LayerScale(dim, cfg.init_values or 0.0)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        return maybe_checkpoint(self.with_cp, self._forward, x, rope)

    def _forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        if fast_inference() and not self.training:
            x = add_residual(x, self.attn(self.norm1(x), rope), self.ls1.gamma)
            return add_mlp_residual(x, self.norm2, self.mlp, self.ls2.gamma)
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


# -- transformers' DINOv3ViTModel layout -------------------------------------------------------

_HF_TOKENS = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "storage_tokens",
              "embeddings.mask_token": "mask_token",
              "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
              "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
_HF_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj",
             "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
             "mlp.up_proj": "mlp.fc1", "mlp.down_proj": "mlp.fc2",
             "mlp.gate_proj": "mlp.w1"}
_HF_SWIGLU = {"mlp.up_proj": "mlp.w2", "mlp.down_proj": "mlp.w3"}
HF_MARKER = "embeddings.patch_embeddings.weight"


def is_transformers_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return HF_MARKER in state_dict


def from_transformers(state_dict: Mapping[str, torch.Tensor],
                      cfg: BackboneConfig) -> dict[str, torch.Tensor]:
    """A ``DINOv3ViTModel`` state dict in Meta's hub layout: q/k/v fused into ``qkv`` with a
    zero k bias and its ``bias_mask``, the mask token as ``(1, dim)``, the RoPE periods Meta's
    (transformers derives them from ``rope_theta``, which is ``cfg.rope_base``). Unknown keys are
    kept as they are, so the strict load names them."""
    swiglu = cfg.ffn_layer == "swiglu"
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _HF_TOKENS:
            out[_HF_TOKENS[key]] = value.reshape(1, -1) if key.endswith("mask_token") else value
            continue
        parts = key.split(".", 3)
        if parts[:2] != ["model", "layer"] or len(parts) < 4:
            out[key] = value
            continue
        block, rest = f"blocks.{parts[2]}.", parts[3]
        if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj",
                                                                    "v_proj"):
            continue  # fused below
        name, _, leaf = rest.rpartition(".")
        table = {**_HF_BLOCK, **(_HF_SWIGLU if swiglu else {})}
        mapped = table.get(rest) or (f"{table[name]}.{leaf}" if name in table else None)
        out[block + (mapped or rest)] = value
    for index in sorted({k.split(".")[2] for k in state_dict if k.startswith("model.layer.")}):
        prefix = f"model.layer.{index}.attention."
        projections = [state_dict.get(f"{prefix}{p}_proj.weight") for p in "qkv"]
        if any(w is None for w in projections):
            continue
        weights = [w for w in projections if w is not None]
        out[f"blocks.{index}.attn.qkv.weight"] = torch.cat(weights)
        if f"{prefix}q_proj.bias" in state_dict:
            q_bias, v_bias = state_dict[f"{prefix}q_proj.bias"], state_dict[f"{prefix}v_proj.bias"]
            out[f"blocks.{index}.attn.qkv.bias"] = torch.cat(
                (q_bias, torch.zeros_like(q_bias), v_bias))
            out[f"blocks.{index}.attn.qkv.bias_mask"] = torch.cat(
                (torch.ones_like(q_bias), torch.zeros_like(q_bias), torch.ones_like(v_bias)))
    out.setdefault("rope_embed.periods",
                   rope_periods(cfg.embed_dim // cfg.num_heads, cfg.rope_base))
    return out


def to_transformers(state_dict: Mapping[str, torch.Tensor],
                    cfg: BackboneConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_transformers` (the RoPE periods and the masked k bias, which
    transformers does not store, are dropped)."""
    swiglu = cfg.ffn_layer == "swiglu"
    tokens = {ours: theirs for theirs, ours in _HF_TOKENS.items()}
    block_map = {ours: theirs for theirs, ours in
                 {**_HF_BLOCK, **(_HF_SWIGLU if swiglu else {})}.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in tokens:
            out[tokens[key]] = value.reshape(1, 1, -1) if key == "mask_token" else value
            continue
        if key == "rope_embed.periods" or not key.startswith("blocks."):
            if key != "rope_embed.periods":
                out[key] = value
            continue
        _, index, rest = key.split(".", 2)
        prefix = f"model.layer.{index}."
        if rest.startswith("attn.qkv."):
            leaf = rest.rsplit(".", 1)[1]
            if leaf == "bias_mask":
                continue
            q, k, v = value.chunk(3)
            out[f"{prefix}attention.q_proj.{leaf}"] = q
            if leaf == "weight":
                out[f"{prefix}attention.k_proj.weight"] = k
            out[f"{prefix}attention.v_proj.{leaf}"] = v
            continue
        name, _, leaf = rest.rpartition(".")
        mapped = block_map.get(rest) or (f"{block_map[name]}.{leaf}" if name in block_map
                                         else rest)
        out[prefix + mapped] = value
    return out
