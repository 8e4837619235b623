"""Starting weights for fine-tuning: a released or trained checkpoint, adapted to the model.

- Another class list: the class embedding (``decode_head.cls_embed.*``) keeps the model's
  fresh initialisation; everything else is loaded (a notice names what was dropped).
- Another crop: every BEiT relative-position bias table is resized, bicubically on its
  (2W-1) x (2W-1) grid of patch offsets, the three cls rows kept as they are.
- Backbone-only weights (keys without ``backbone.``/``decode_head.``): loaded into the
  backbone; the adapter and head keep their initialisation (a notice says how many). They
  must fill every ViT block (``backbone.blocks.*``).
Any other mismatch is an error listing the keys, and so is a checkpoint with no tensors.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config.presets import PRESETS
from ..errors import CheckpointError
from ..modeling.segmentor import SegmentationModel, checkpoint_filter
from ..weights.checkpoint import apply_state_dict, read_checkpoint

logger = logging.getLogger(__name__)

# The layers whose rows are classes: Mask2Former's class embedding, UperNet's (and its
# auxiliary head's) last 1x1 convolution.
CLASS_EMBED = ("decode_head.cls_embed.weight", "decode_head.cls_embed.bias",
               "decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
               "auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias")
TABLE_SUFFIX = "attn.relative_position_bias_table"


def resize_relative_position_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A (rows, heads) BEiT table for another square window of ``window`` patches a side."""
    offsets = table.shape[0] - 3
    side = math.isqrt(offsets)
    if side * side != offsets:
        raise CheckpointError(f"a relative position table of {table.shape[0]} rows is not "
                              "(2W-1)^2 + 3")
    new_side = 2 * window - 1
    if new_side == side:
        return table
    grid = table[:offsets].t().reshape(1, -1, side, side).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.reshape(-1, new_side * new_side).t().to(table.dtype)
    return torch.cat([grid, table[offsets:]])


def init_source(init: str) -> Path:
    """A preset name (its release weights, cached or downloaded) or a checkpoint path."""
    if init in PRESETS:
        from ..weights.download import fetch_weights

        return Path(fetch_weights(PRESETS[init]))
    path = Path(init)
    if not path.exists():
        raise CheckpointError(f"--init {init}: neither a preset nor an existing checkpoint "
                              "file")
    return path


def initialize(model: SegmentationModel, init: str, *, trust_checkpoint: bool = False
               ) -> list[str]:
    """Load the weights of ``init`` into ``model`` as described above; returns the notices."""
    ckpt = read_checkpoint(init_source(init), trust_checkpoint=trust_checkpoint)
    given = dict(ckpt.state_dict)
    if not given:
        raise CheckpointError(f"--init {init} holds no tensors (an empty state dict): nothing "
                              "to start from; give a release checkpoint, a work dir's "
                              "latest.safetensors or pretrained backbone weights")
    notices = []
    backbone_only = not any(k.startswith(("backbone.", "decode_head.")) for k in given)
    if backbone_only:
        given = {f"backbone.{k}": v for k, v in given.items()}
    expected, _ = checkpoint_filter(model.state_dict(), "model")
    window = model.config.backbone.window_size[0]
    resized = 0
    for key, value in list(given.items()):
        if key.endswith(TABLE_SUFFIX) and key in expected and value.shape != expected[key].shape:
            given[key] = resize_relative_position_table(value, window)
            resized += 1
    if resized:
        notices.append(f"resized {resized} relative position bias tables to the "
                       f"{model.crop_size}px crop")
    dropped = [k for k in CLASS_EMBED
               if k in given and k in expected and given[k].shape != expected[k].shape]
    for key in dropped:
        del given[key]
    if dropped:
        notices.append(f"{init} was trained on other classes than the model's "
                       f"{model.num_classes}: dropped {', '.join(dropped)} (re-initialised)")
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in given.items() if k in expected and v.shape != expected[k].shape]
    unexpected = [k for k in given if k not in expected]
    missing = [k for k in expected if k not in given and k not in dropped]
    blocks = [k for k in missing if k.startswith("backbone.blocks.")]
    if backbone_only and blocks and not (mismatched or unexpected):
        found = sorted(k.removeprefix("backbone.") for k in given)
        raise CheckpointError(
            f"--init {init} fills only {len(given)} of the model's tensors "
            f"({', '.join(found[:5])}{' ...' if len(found) > 5 else ''}) and misses "
            f"{len(blocks)} of the ViT blocks' ({blocks[0]}, ...): pretrained backbone "
            "weights must hold every block; use a checkpoint of this architecture")
    if mismatched or unexpected or (missing and not backbone_only):
        problems = "; ".join(f"{what}: {', '.join(keys[:8])}"
                             + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
                             for what, keys in (("shape mismatch", mismatched),
                                                ("unexpected", unexpected),
                                                ("missing", missing)) if keys)
        raise CheckpointError(f"--init {init} does not fit the model ({problems}): use a "
                              "checkpoint of the same architecture")
    if backbone_only:
        notices.append(f"{init} holds backbone weights only: {len(missing)} tensors of the "
                       "adapter and head keep their initialisation")
    apply_state_dict(model, given, strict=False, source=str(init))
    for notice in notices:
        logger.info("init: %s", notice)
    return notices
