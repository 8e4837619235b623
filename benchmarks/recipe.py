"""Full-size random weights that give a real, many-class answer (the recipe of
../shared/notes/full-size-random-weights.md), shared by the benchmarks that compare answers.

Plain random weights make a full-size Mask2Former model paint a photo in one class, so label
agreement would say nothing. Here every tensor is drawn from a distribution chosen per kind of
layer (seeded by its key, so the draw does not depend on order), and the Mask2Former pixel
decoder's final ``mask_feature`` bias is set from the model's own input (one fp32 forward) so
that only a few queries are active per pixel. Tensors the recipe does not name keep PyTorch's
initialisation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def default_photo() -> np.ndarray:
    """scikit-image's 600x400 coffee photo (the recipe's), else the repository's astronaut."""
    try:
        from skimage import data

        return data.coffee()
    except ImportError:
        from PIL import Image

        return np.asarray(Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB"))


def _draw(key: str, shape: tuple[int, ...], kind: str, a: float, b: float = 0.0) -> torch.Tensor:
    """float64 draws cast to float32, seeded by the key alone: normal with std ``a`` (and mean
    ``b``), or uniform on [a, b)."""
    seed = int.from_bytes(hashlib.sha256(f"20250401/{key}".encode()).digest()[:8], "little")
    gen = torch.Generator().manual_seed(seed)
    if kind == "normal":
        out = torch.randn(shape, generator=gen, dtype=torch.float64) * a + b
    else:
        out = torch.rand(shape, generator=gen, dtype=torch.float64) * (b - a) + a
    return out.float()


def _value(key: str, tensor: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
    """The recipe's draw for one state-dict entry (None: leave it)."""
    shape = tuple(tensor.shape)
    name = key.rsplit(".", 1)[-1]
    decoder = key.startswith("decode_head.transformer_decoder.")
    if isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm):
        draws = {"weight": ("uniform", 0.5, 1.5), "bias": ("normal", 0.1),
                 "running_mean": ("normal", 0.1), "running_var": ("uniform", 0.5, 2.0)}
        return _draw(key, shape, *draws[name]) if name in draws else None
    if isinstance(module, nn.LayerNorm | nn.GroupNorm):
        if name == "weight":
            return 1 + _draw(key, shape, "normal", 0.2)
        return _draw(key, shape, "normal", 0.05 if decoder else 0.1)
    if isinstance(module, nn.MultiheadAttention) and name.startswith("in_proj"):
        if name == "in_proj_weight":
            return _draw(key, shape, "normal", shape[1] ** -0.5)
        return _draw(key, shape, "normal", 0.05)
    if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
        if name == "bias":
            if decoder:
                return _draw(key, shape, "normal", 0.05)
            if key.endswith("sampling_offsets.bias"):
                return _draw(key, shape, "normal", 2.0)
            if key.endswith("attention_weights.bias"):
                return _draw(key, shape, "normal", 0.5)
            return _draw(key, shape, "normal", 0.1)
        fan_in = shape[0] if isinstance(module, nn.ConvTranspose2d) else int(
            np.prod(shape[1:]))
        scale = 1.0
        if key == "decode_head.cls_embed.weight":
            scale = 10.0
        elif key == "decode_head.mask_embed.4.weight":  # the mask embedding's last layer
            scale = 2.0
        elif decoder and (key.endswith("out_proj.weight") or (".ffns." in key
                          and key.endswith("layers.1.weight"))):
            scale = 0.05
        return _draw(key, shape, "normal", scale * fan_in ** -0.5)
    if name in ("query_feat", "query_embed") or key.endswith(("query_feat.weight",
                                                              "query_embed.weight")):
        return _draw(key, shape, "normal", 1.0)
    if key.endswith(("level_embed", "level_embed.weight", "level_encoding.weight")):
        return _draw(key, shape, "normal", 0.5)
    if name == "cls_token":
        return _draw(key, shape, "normal", 0.5)
    if name in ("q_bias", "v_bias"):
        return _draw(key, shape, "normal", 0.1)
    if name == "relative_position_bias_table":
        return _draw(key, shape, "normal", 0.5)
    if name in ("gamma_1", "gamma_2", "gamma"):
        return _draw(key, shape, "uniform", 0.5, 1.0)
    return None



def recipe_weights(model: nn.Module) -> None:
    """Overwrite the model's parameters and buffers with the recipe's draws (in place)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, tensor in model.state_dict(keep_vars=True).items():
            owner = modules[key.rsplit(".", 1)[0]] if "." in key else model
            value = _value(key, tensor, owner)
            if value is not None:
                tensor.copy_(value.view_as(tensor))


def set_mask_feature_bias(model: nn.Module, run: Callable[[], object]) -> None:
    """-W m - beta b/|b| (see the note), m the mean input of the pixel decoder's last conv
    over what ``run()`` feeds the model: zero-mean mask features shifted against the mask
    embedding's bias, so that only a few queries are active per pixel. Nothing for a model
    without a Mask2Former head (``run`` is still called)."""
    pixel_decoder = getattr(model.decode_head, "pixel_decoder", None)
    if pixel_decoder is None:
        run()
        return
    conv = pixel_decoder.mask_feature
    inputs: list[torch.Tensor] = []
    hook = conv.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    try:
        run()
    finally:
        hook.remove()
    with torch.no_grad():
        x = torch.cat([i.permute(0, 2, 3, 1).reshape(-1, i.shape[1]) for i in inputs]).double()
        weight = conv.weight.double().flatten(1)
        mean = x.mean(0)
        centred = (x - mean) @ weight.t()
        beta = 20 * centred.std(0).mean()
        b = model.decode_head.mask_embed[-1].bias.double()
        conv.bias.copy_((-weight @ mean - beta * b / b.norm()).to(conv.bias.dtype))
