"""ViT-Adapter around a BEiT, a plain ViT or a DINOv3 ViT: spatial prior module, injectors
(the official adapter) or none (Meta's DINOv3_Adapter), extractors and output fusion."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import BackboneConfig, Behaviour
from ..ops import Linear, fast_inference, fresh_activation, linear
from .backbones import beit, dinov3, vit
from .backbones.beit import DropPath, PatchEmbed
from .backbones.vit import resize_pos_embed
from .deform_attn import MSDeformAttn
from .layers import (
    add_residual,
    cached_constant,
    conv_bn_relu,
    maybe_checkpoint,
    pointwise_conv_to_contiguous,
    token_grid,
    token_map,
    transposed_conv2x2_add,
)

Shapes = tuple[tuple[int, int], ...]


@cached_constant(maxsize=16)
def reference_points(shapes: Shapes, device: torch.device) -> torch.Tensor:
    """Pixel centres ``((j + 0.5) / W, (i + 0.5) / H)`` of each level, row-major and
    concatenated, shape ``(1, sum(H*W), 1, 2)`` in float32. Cached per size and device."""
    points = []
    for h, w in shapes:
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h),
                                  -1))
    return torch.cat(points, 1)[:, :, None]


def pyramid_shapes(height: int, width: int) -> Shapes:
    """The 1/8, 1/16 and 1/32 grids of an input of ``height x width`` pixels."""
    return tuple((height // s, width // s) for s in (8, 16, 32))


def channels_last_maps(x: torch.Tensor) -> bool:
    """Whether the adapter's maps stay channels-last views of its tokens (fast inference on a
    CPU): its output fusion (resizes, additions, the transposed convolution) and the heads'
    first convolutions (matrix products) run as fast or faster on them, and the transposing
    copies to (B, C, H, W) maps are saved. Contiguous maps otherwise."""
    return fast_inference() and x.device.type == "cpu"


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A stage of the stem: its conv, BatchNorm, ReLU triples through :func:`conv_bn_relu`
    (folded in fast inference), other modules as they are."""
    modules = list(stage)
    i = 0
    while i < len(modules):
        conv, bn, relu = ([*modules[i:i + 3], None, None])[:3]
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                and isinstance(relu, nn.ReLU)):
            x = conv_bn_relu(conv, bn, x)
            i += 3
        else:
            x = modules[i](x)
            i += 1
    return x


class SpatialPriorModule(nn.Module):
    """Convolutional stem giving 1/4, 1/8, 1/16 and 1/32 maps projected to the ViT width."""

    def __init__(self, inplanes: int, embed_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, inplanes, 2),
                                  *_conv_bn_relu(inplanes, inplanes, 1),
                                  *_conv_bn_relu(inplanes, inplanes, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns c1 as a (B, C, H/4, W/4) map and c2..c4 as (B, HW, C) token sequences."""
        fast = fast_inference()
        if fast:  # channels-last: the narrow convolutions run about twice as fast on a CPU
            x = x.contiguous(memory_format=torch.channels_last)
        c1 = _run_stage(self.stem, x)
        c2 = _run_stage(self.conv2, c1)
        c3 = _run_stage(self.conv3, c2)
        c4 = _run_stage(self.conv4, c3)
        # (From channels-last maps these tokens are contiguous.)
        tokens = [fc(c).flatten(2).transpose(1, 2)
                  for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        if channels_last_maps(x):  # the pixels as rows of one matrix product
            weight = self.fc1.weight.flatten(1)
            c1 = linear(c1.permute(0, 2, 3, 1), weight, self.fc1.bias).permute(0, 3, 1, 2)
        elif fast:
            c1 = pointwise_conv_to_contiguous(c1, self.fc1.weight, self.fc1.bias)
        else:
            c1 = self.fc1(c1)
        return c1, tokens


class DWConv(nn.Module):
    """One depthwise 3x3 conv applied separately to the 1/8, 1/16 and 1/32 token groups
    (the 16:4:1 split of the adapter's token sequence)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        tokens = x.shape[1]
        n = tokens // 21
        groups = ((0, 16 * n, 2 * height, 2 * width), (16 * n, 20 * n, height, width),
                  (20 * n, tokens, height // 2, width // 2))
        # The token groups are channels-last maps; with the weight in that layout too the
        # depthwise kernel runs on them as they are (10x faster than converting them) and
        # returns channels-last maps, i.e. contiguous tokens.
        conv = self.dwconv
        weight = conv.weight.to(memory_format=torch.channels_last)
        outs = [F.conv2d(token_grid(x[:, a:b], h, w), weight, conv.bias,
                         padding=conv.padding, groups=conv.groups).flatten(2).transpose(1, 2)
                for a, b, h, w in groups]
        return torch.cat(outs, dim=1)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(fresh_activation(self.dwconv(self.fc1(x), height, width), "gelu"))


class AdapterAttention(nn.Module):
    """``MSDA(LN(query), LN(feat))``, shared by the injector and the extractor.

    With the ModelScope behaviour the normalised query is added to the result, as mmcv's
    ``MultiScaleDeformableAttention`` does when called with ``identity=None``. ``with_cp``:
    gradient checkpointing of the injector/extractor in training (set by the trainer).
    """

    with_cp = False

    def __init__(self, cfg: BackboneConfig, behaviour: Behaviour, num_levels: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.query_norm = nn.LayerNorm(dim, eps=cfg.adapter_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=cfg.adapter_eps)
        self.attn = MSDeformAttn(dim, cfg.deform_num_heads, num_levels, cfg.n_points,
                                 cfg.deform_ratio)
        self.add_query = behaviour == "modelscope"

    def attend(self, query: torch.Tensor, feat: torch.Tensor, ref: torch.Tensor,
               shapes: Shapes) -> torch.Tensor:
        normed = self.query_norm(query)
        out = self.attn(normed, ref, self.feat_norm(feat), shapes)
        return out + normed if self.add_query else out


class Injector(AdapterAttention):
    """Injects spatial-prior tokens into the ViT tokens: ``x + gamma * MSDA(LN(x), LN(c))``."""

    def __init__(self, cfg: BackboneConfig, behaviour: Behaviour) -> None:
        super().__init__(cfg, behaviour, num_levels=3)
        self.gamma = nn.Parameter(torch.full((cfg.embed_dim,), float(cfg.init_values or 0.0)))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ref: torch.Tensor,
                shapes: Shapes) -> torch.Tensor:
        return maybe_checkpoint(self.with_cp, self._forward, x, c, ref, shapes)

    def _forward(self, x: torch.Tensor, c: torch.Tensor, ref: torch.Tensor,
                 shapes: Shapes) -> torch.Tensor:
        return add_residual(x, self.attend(x, c, ref, shapes), self.gamma)


class Extractor(AdapterAttention):
    """Extracts ViT features into the spatial-prior tokens: ``c + MSDA(LN(c), LN(x))``, then a
    ConvFFN."""

    def __init__(self, cfg: BackboneConfig, behaviour: Behaviour) -> None:
        super().__init__(cfg, behaviour, num_levels=1)
        self.ffn: ConvFFN | None
        if cfg.with_cffn:
            self.ffn = ConvFFN(cfg.embed_dim, int(cfg.embed_dim * cfg.cffn_ratio))
            self.ffn_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.adapter_eps)
            self.drop_path = DropPath(cfg.drop_path_rate)
        else:
            self.ffn = None

    def forward(self, c: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, shapes: Shapes,
                height: int, width: int) -> torch.Tensor:
        return maybe_checkpoint(self.with_cp, self._forward, c, x, ref, shapes, height, width)

    def _forward(self, c: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, shapes: Shapes,
                 height: int, width: int) -> torch.Tensor:
        c = add_residual(c, self.attend(c, x, ref, shapes))
        if self.ffn is not None:
            c = add_residual(c, self.drop_path(self.ffn(self.ffn_norm(c), height, width)))
        return c


class InteractionBlock(nn.Module):
    """One interaction: an injector before the ViT's run of blocks (when the adapter has
    injectors), then the extractor and, in the last interaction, two extra extractors reading
    the run's output."""

    def __init__(self, cfg: BackboneConfig, behaviour: Behaviour, extra_extractors: bool) -> None:
        super().__init__()
        self.injector = Injector(cfg, behaviour) if cfg.with_injector else None
        self.extractor = Extractor(cfg, behaviour)
        self.extra_extractors = (nn.ModuleList([Extractor(cfg, behaviour) for _ in range(2)])
                                 if extra_extractors else None)

    def extract(self, c: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, vit_grid: Shapes,
                height: int, width: int) -> torch.Tensor:
        for extractor in (self.extractor, *(self.extra_extractors or ())):
            c = extractor(c, x, ref, vit_grid, height, width)
        return c


# The ViT's own parts (everything else is the adapter): what freezing the ViT freezes.
VIT_PARTS = ("patch_embed", "cls_token", "storage_tokens", "mask_token", "pos_embed",
             "rope_embed", "blocks", "norm", "local_cls_norm")


class ViTAdapter(nn.Module):
    """The ViT-Adapter around a ViT, by ``cfg.kind``: a BEiT (official ``BEiTAdapter``: cls
    token, relative position bias), a plain ViT (official ``ViTAdapter``: absolute position
    embedding, no cls token) or Meta's DINOv3 ViT (``DINOv3_Adapter``: cls and storage tokens,
    RoPE, the final norm applied to each tapped layer, no injectors). Returns four maps at 1/4,
    1/8, 1/16 and 1/32.

    The ViT's parameters sit directly in this module under their released names
    (:data:`VIT_PARTS`); :meth:`freeze_vit` freezes them (no gradients, eval mode kept).
    """

    def __init__(self, cfg: BackboneConfig, behaviour: Behaviour = "official") -> None:
        super().__init__()
        self.cfg = cfg
        self.vit_frozen = False
        self.vit_dtype: torch.dtype | None = None  # a frozen ViT's own dtype (bf16)
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, dim)
        self.cls_token: nn.Parameter | None = None
        self.pos_embed: nn.Parameter | None = None
        self.rope_embed: dinov3.RopeEmbedding | None = None
        self.norm: nn.LayerNorm | None = None
        if cfg.kind == "vit":
            grid = cfg.img_size // cfg.patch_size
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        else:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if cfg.kind == "dinov3":
            self._dinov3_tokens(cfg)
        self.blocks = nn.ModuleList([
            _block(cfg, cfg.drop_path_rate * i / max(cfg.depth - 1, 1)) for i in range(cfg.depth)
        ])
        if cfg.kind == "dinov3":
            self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
            if cfg.untie_global_and_local_cls_norm:  # Meta's, used only in its pretraining
                self.local_cls_norm = nn.LayerNorm(dim, eps=cfg.norm_eps).requires_grad_(False)
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(cfg.conv_inplane, dim, cfg.in_channels)
        last = len(cfg.interaction_indexes) - 1
        self.interactions = nn.ModuleList([
            InteractionBlock(cfg, behaviour, cfg.use_extra_extractor and i == last)
            for i in range(len(cfg.interaction_indexes))
        ])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1 = nn.BatchNorm2d(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.norm3 = nn.BatchNorm2d(dim)
        self.norm4 = nn.BatchNorm2d(dim)

    def _dinov3_tokens(self, cfg: BackboneConfig) -> None:
        dim = cfg.embed_dim
        tokens = cfg.n_storage_tokens
        self.storage_tokens: nn.Parameter | None = (
            nn.Parameter(torch.zeros(1, tokens, dim)) if tokens else None)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.rope_embed = dinov3.RopeEmbedding(dim // cfg.num_heads, cfg.rope_base,
                                               cfg.rope_rescale_coords)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pyramid = pyramid_shapes(*x.shape[-2:])
        to_map = token_grid if channels_last_maps(x) else token_map
        c1, (c2, c3, c4) = self.spm(x)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1],
                       c4 + self.level_embed[2]], dim=1)

        with self._vit_compute():
            prefix, x, height, width = self._tokens(x)
        rope = None if self.rope_embed is None else self.rope_embed(height, width)
        vit_grid = ((height, width),)
        outs = []
        layer: InteractionBlock
        for layer, (first, last) in zip(self.interactions,  # type: ignore[assignment]
                                        self.cfg.interaction_indexes, strict=True):
            if layer.injector is not None:
                x = layer.injector(x, c, reference_points(vit_grid, x.device), pyramid)
            with self._vit_compute():
                prefix, x = self._run_blocks(prefix, x, self.blocks[first:last + 1], rope)
                feat = x if self.norm is None else self.norm(x)
            if self.vit_dtype is not None:  # a frozen bf16 ViT's output, for the adapter
                feat = feat.to(self.level_embed.dtype)
            c = layer.extract(c, feat, reference_points(pyramid, x.device), vit_grid, height,
                              width)
            outs.append(to_map(feat, height, width))

        # In place on fresh tensors (c's own parts in fast inference): at 896 each 1/4-scale
        # map is 205 MB.
        c2, c3, c4 = (to_map(part, h, w) for part, (h, w) in zip(
            c.split([h * w for h, w in pyramid], dim=1), pyramid, strict=True))
        c1 = transposed_conv2x2_add(self.up, c2, c1)
        if self.cfg.add_vit_feature:
            x1, x2, x3, x4 = outs
            c1.add_(F.interpolate(x1, scale_factor=4, mode="bilinear", align_corners=False))
            # Not in place: the transposed conv took c2 (autograd keeps it).
            c2 = c2 + F.interpolate(x2, scale_factor=2, mode="bilinear", align_corners=False)
            c3.add_(x3)
            c4.add_(F.interpolate(x4, scale_factor=0.5, mode="bilinear", align_corners=False))
        return [self.norm1(c1), self.norm2(c2), self.norm3(c3), self.norm4(c4)]

    def _tokens(self, image: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, int, int]:
        """The patch tokens of ``image`` and the tokens before them (BEiT: cls; DINOv3: cls and
        storage; plain ViT: none), with the patch grid's height and width."""
        x, height, width = self.patch_embed(image)
        batch = x.shape[0]
        if self.pos_embed is not None:
            side = self.cfg.img_size // self.cfg.patch_size
            return None, x + resize_pos_embed(self.pos_embed, side, height, width), height, width
        assert self.cls_token is not None
        cls: torch.Tensor = self.cls_token
        if self.cfg.kind == "dinov3":
            cls = cls + 0 * self.mask_token  # as Meta's, so the mask token is in the graph
            if self.storage_tokens is not None:
                cls = torch.cat((cls, self.storage_tokens), dim=1)
        return cls.expand(batch, -1, -1), x, height, width

    def _run_blocks(self, prefix: torch.Tensor | None, x: torch.Tensor, blocks: nn.ModuleList,
                    rope: dinov3.Rope | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        tokens = x if prefix is None else torch.cat((prefix, x), dim=1)
        for block in blocks:
            tokens = block(tokens) if rope is None else block(tokens, rope)
        if prefix is None:
            return None, tokens
        return tokens[:, :prefix.shape[1]], tokens[:, prefix.shape[1]:]

    def vit_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The ViT's own parameters (names relative to this module)."""
        return [(name, p) for name, p in self.named_parameters()
                if name.split(".")[0] in VIT_PARTS]

    def vit_state_names(self) -> list[str]:
        """The names (relative to this module) of the ViT's tensors in a checkpoint."""
        return [name for name in self.state_dict()
                if name.split(".")[0] in VIT_PARTS and not name.endswith(beit.INDEX_KEY)]

    def freeze_vit(self, dtype: torch.dtype | None = None) -> None:
        """Freeze the ViT (Meta's DINOv3 recipe): no gradients, eval mode (no drop path, no
        RoPE coordinate rescaling) even while the adapter trains; with ``dtype`` (bf16) its
        weights are stored and run in that dtype (autocast), its outputs float32."""
        self.vit_frozen, self.vit_dtype = True, dtype
        for name, param in self.named_parameters():  # (buffers, e.g. RoPE periods, stay fp32)
            if name.split(".")[0] in VIT_PARTS:
                param.requires_grad_(False)
                if dtype is not None:
                    param.data = param.data.to(dtype)
        self.train(self.training)

    def _vit_compute(self) -> contextlib.AbstractContextManager[object]:
        """Autocast to a frozen ViT's own dtype (bf16), else nothing."""
        if self.vit_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.patch_embed.proj.weight.device.type, dtype=self.vit_dtype)

    def train(self, mode: bool = True) -> ViTAdapter:
        super().train(mode)
        if self.vit_frozen:
            for name, module in self.named_children():
                if name in VIT_PARTS:
                    module.eval()
        return self


def _block(cfg: BackboneConfig, drop_path: float) -> nn.Module:
    if cfg.kind == "dinov3":
        return dinov3.Block(cfg, drop_path)
    if cfg.kind == "vit":
        return vit.Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias,
                         cfg.layer_scale, cfg.norm_eps, drop_path)
    return beit.Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.window_size,
                      cfg.qkv_bias, cfg.use_rel_pos_bias, cfg.init_values, cfg.norm_eps,
                      drop_path)
