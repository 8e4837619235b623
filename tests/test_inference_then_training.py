"""A process that evaluates and then trains (the trainer's in-training evaluation): the
model's cached constant tensors, first made under ``torch.inference_mode``, must still serve
autograd, gradient checkpointing included."""

from __future__ import annotations

import pytest
import torch

from vitadapter import build_model, load_checkpoint
from vitadapter.modeling.adapter import reference_points
from vitadapter.modeling.backbones.beit import _cached_index
from vitadapter.modeling.heads.pixel_decoder import level_reference_points
from vitadapter.modeling.heads.position_encoding import sine_position_encoding

from .conftest import CHECKPOINT, set_config

CPU = torch.device("cpu")
CACHED = [
    (reference_points, (((4, 4), (2, 2)), CPU)),
    (_cached_index, ((3, 5), CPU)),
    (level_reference_points, (((4, 4), (2, 2)), (8, 16), CPU)),
    (sine_position_encoding, (3, 4, 8, CPU)),
]


@pytest.mark.parametrize(("cached", "args"), CACHED, ids=lambda v: getattr(v, "__name__", ""))
def test_cached_tensors_made_in_inference_mode_are_normal_tensors(cached, args):
    cached.cache_clear()
    with torch.inference_mode():
        first = cached(*args)
    assert not first.is_inference()
    assert cached(*args) is first  # still cached


def test_training_with_checkpointing_after_an_evaluation():
    for cached, _ in CACHED:
        cached.cache_clear()
    model = build_model(set_config("tiny-upstream"), device="meta")
    load_checkpoint(model, CHECKPOINT)
    image = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        model.eval()(image)
    model.train()
    checkpointed = [m for m in model.modules() if hasattr(m, "with_cp")]
    assert checkpointed
    for module in checkpointed:
        module.with_cp = True
    outputs = model(image)
    tensors = outputs.values() if isinstance(outputs, dict) else [outputs]
    sum(t.float().sum() for t in tensors if torch.is_tensor(t)).backward()
    assert model.backbone.level_embed.grad is not None
