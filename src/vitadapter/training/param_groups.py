"""Layer-wise learning-rate decay parameter groups (the official BEiT/ViT-Adapter constructor).

Layer ids, for ``num_layers`` = backbone depth:

- 0: ``backbone.cls_token``, ``backbone.mask_token``, ``backbone.pos_embed`` (exact names), names
  starting with ``backbone.patch_embed`` and with ``decode_head.`` + ``mask_embed``,
  ``cls_embed``, ``level_embed``, ``query_embed`` or ``query_feat``;
- i + 1: ``backbone.blocks.i.*``;
- num_layers + 1 (lr scale 1): everything else (adapter, ``backbone.level_embed``, pixel
  decoder, transformer decoder).

``lr_scale = decay_rate ** (num_layers + 1 - id)`` and each group's ``lr`` is already scaled.
Weight decay is 0 for 1-D tensors and names ending in ``.bias``. Quirk kept on purpose: the
official constructor also exempts ``pos_embed`` and ``cls_token`` by comparing them with the
full (prefixed) names, which never matches, so ``backbone.cls_token`` (3-D) *is* decayed.
Frozen parameters (``requires_grad`` False) are left out. Groups are named
``layer_<id>_decay`` / ``layer_<id>_no_decay`` and listed in order of first appearance.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_ID0_EXACT = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")
_ID0_PREFIXES = ("backbone.patch_embed", "decode_head.mask_embed", "decode_head.cls_embed",
                 "decode_head.level_embed", "decode_head.query_embed", "decode_head.query_feat")
# Compared with the full names by the official code, hence never matched (see the docstring).
_NO_DECAY_NAMES = ("pos_embed", "cls_token")


def layer_id(name: str, num_layers: int) -> int:
    """Layer id (0 .. num_layers + 1) of the parameter called ``name``."""
    if name in _ID0_EXACT or name.startswith(_ID0_PREFIXES):
        return 0
    if name.startswith("backbone.blocks"):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def is_decayed(name: str, ndim: int) -> bool:
    """Whether the official rule applies weight decay to this parameter."""
    return not (ndim == 1 or name.endswith(".bias") or name in _NO_DECAY_NAMES)


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float,
                             decay_rate: float, num_layers: int) -> list[dict[str, Any]]:
    """Torch optimizer param groups, with ``lr`` (scaled), ``lr_scale``, ``weight_decay``,
    ``group_name`` and ``param_names`` per group."""
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = is_decayed(name, param.ndim)
        ident = layer_id(name, num_layers)
        group_name = f"layer_{ident}_{'decay' if decayed else 'no_decay'}"
        if group_name not in groups:
            scale = decay_rate ** (num_layers + 1 - ident)
            groups[group_name] = {"params": [], "param_names": [], "lr": scale * lr,
                                  "lr_scale": scale, "group_name": group_name,
                                  "weight_decay": weight_decay if decayed else 0.0}
        groups[group_name]["params"].append(param)
        groups[group_name]["param_names"].append(name)
    return list(groups.values())
