"""The CUDA path (fast kernels, fp32 and bf16): run on a machine with a GPU, skipped without."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitadapter import Segmenter, build_model, load_checkpoint
from vitadapter.backends.precision import autocast
from vitadapter.ops import reference_path

from .conftest import CHECKPOINT, PHOTO, expected, set_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_model():
    model = build_model(set_config("tiny-upstream"), device="meta")
    load_checkpoint(model, CHECKPOINT)
    return model.to("cuda")


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_fp32_parity_on_cuda(cuda_model, path):
    exp = expected("tiny-upstream")
    crop = torch.from_numpy(exp["img"][:, :, :, :128]).cuda()
    runner = Segmenter.from_model(cuda_model).runner
    with reference_path(path == "reference"):
        scores = runner(crop.cpu().numpy())
    # fp32 as the runner computes it: cuDNN convolutions without TF32 (with TF32 the
    # features are off by up to 4e-3, measured on an H200).
    with (torch.inference_mode(), reference_path(path == "reference"),
          autocast("fp32", crop.device)):
        feats = cuda_model.inspect(crop).features
    for i, feat in enumerate(feats, start=1):
        ref = exp[f"crop0_feats_{i}"]
        np.testing.assert_allclose(feat.cpu().numpy(), ref, rtol=0,
                                   atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(scores[:, exp["crop0_seg_classes"]], exp["crop0_seg"], rtol=0,
                               atol=1e-4)


def test_label_map_on_cuda_equals_the_reference(cuda_model):
    labels = Segmenter.from_model(cuda_model)(str(PHOTO)).label_map
    assert (labels == expected("tiny-upstream")["label_map"]).mean() > 0.999


def test_bf16_autocast_on_cuda_mostly_agrees(cuda_model):
    labels = Segmenter.from_model(cuda_model, precision="bf16")(str(PHOTO)).label_map
    assert (labels == expected("tiny-upstream")["label_map"]).mean() > 0.9


def test_fp16_autocast_on_cuda_mostly_agrees(cuda_model):
    labels = Segmenter.from_model(cuda_model, precision="fp16")(str(PHOTO)).label_map
    assert (labels == expected("tiny-upstream")["label_map"]).mean() > 0.9
