"""Meta's DINOv3 segmentor (ViT -> DINOv3_Adapter -> Mask2FormerHead) stage by stage against the
``tiny-dinov3-adapter-m2f`` reference set, on both kernel paths, and its weights as Meta and
transformers distribute them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vitadapter import Segmenter, build_model, load_checkpoint
from vitadapter.cli import main
from vitadapter.config import load_config_file
from vitadapter.errors import CheckpointError
from vitadapter.files import sha256_of
from vitadapter.modeling.backbones import dinov3
from vitadapter.ops import reference_path
from vitadapter.ops import self_attention as attention_module
from vitadapter.weights.checkpoint import read_backbone_checkpoint
from vitadapter.weights.safetensors import save_safetensors

from .conftest import REFERENCE

SET = REFERENCE / "tiny-dinov3-adapter-m2f"
CONFIG, HEAD, BACKBONE = SET / "config.json", SET / "head.pth", SET / "backbone.pth"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(SET / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    model = build_model(CONFIG, device="meta")
    load_checkpoint(model, HEAD, backbone=BACKBONE)
    return model


def crop0(expected: dict[str, np.ndarray]) -> torch.Tensor:
    y1, y2, x1, x2 = expected["crop0_box"]
    return torch.from_numpy(expected["img"][:, :, y1:y2, x1:x2]).contiguous()


def run_stages(model: torch.nn.Module, crop: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every stage the set records: the tapped ViT tokens (outputs of the final norm), the
    spatial prior, the adapter's maps, the pixel decoder and the ten predictions."""
    captured: dict[str, list[torch.Tensor]] = {"taps": [], "spm": []}
    hooks = [model.backbone.norm.register_forward_hook(
                 lambda _m, _i, out: captured["taps"].append(out)),
             model.backbone.spm.register_forward_hook(
                 lambda _m, _i, out: captured["spm"].append(out))]
    try:
        with torch.no_grad():
            out = model.inspect(crop)
    finally:
        for hook in hooks:
            hook.remove()
    (c1, (c2, c3, c4)), = captured["spm"]
    stages = {"crop0_backbone_patch_tokens": torch.stack(captured["taps"]),
              "crop0_spm_c1_sub4": c1[..., ::4, ::4], "crop0_spm_c2": c2, "crop0_spm_c3": c3,
              "crop0_spm_c4": c4, "crop0_adapter_out_1_sub4": out.features[0][..., ::4, ::4],
              "crop0_pd_mask_features_sub4": out.head.mask_features[..., ::4, ::4],
              "crop0_cls_all_layers": torch.stack(out.head.cls_logits),
              "crop0_mask_all_layers_sub2": torch.stack(out.head.mask_logits)[..., ::2, ::2]}
    for i in (2, 3, 4):
        stages[f"crop0_adapter_out_{i}"] = out.features[i - 1]
    for i, memory in enumerate(out.head.memories):
        stages[f"crop0_pd_multi_scale_{i}"] = memory
    return stages


@pytest.mark.parametrize("path", ["fast", "explicit-attention", "reference"])
def test_every_stage_matches_meta(model: torch.nn.Module, expected: dict[str, np.ndarray],
                                  path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "explicit-attention":  # the fast path's attention at a full-size crop's tokens
        monkeypatch.setattr(attention_module, "EXPLICIT_TOKENS", 1)
        monkeypatch.setattr(attention_module, "F", SimpleNamespace(
            scaled_dot_product_attention=pytest.fail))
    with reference_path(path == "reference"):
        stages = run_stages(model, crop0(expected))
    assert len(stages) == 15
    for name, ours in stages.items():
        theirs = expected[name]
        assert ours.shape == theirs.shape, name
        scale = float(np.abs(theirs).max())
        error = float((ours.float() - torch.from_numpy(theirs)).abs().max()) / scale
        assert error < 1e-4, f"{name}: {error:.2e} of its scale"


def test_buffers_are_metas(model: torch.nn.Module, expected: dict[str, np.ndarray]) -> None:
    """The RoPE periods Meta stores are its formula's; taps follow FOUR_EVEN_INTERVALS."""
    periods = model.backbone.rope_embed.periods
    assert torch.equal(periods, torch.from_numpy(expected["rope_periods"]))
    assert torch.equal(dinov3.rope_periods(16, 100.0), periods)
    assert model.config.backbone.taps == tuple(expected["crop0_backbone_taps"])
    mask = model.backbone.blocks[0].attn.qkv.bias_mask
    assert mask.tolist() == [1.0] * 64 + [0.0] * 64 + [1.0] * 64


def test_head_file_alone_names_the_missing_backbone() -> None:
    model = build_model(CONFIG, device="meta")
    with pytest.raises(CheckpointError, match="pass the backbone file too"):
        load_checkpoint(model, HEAD)
    with pytest.raises(CheckpointError, match="is not a backbone file"):
        load_checkpoint(build_model(CONFIG, device="meta"), HEAD, backbone=HEAD)


def test_convert_merges_the_two_files(tmp_path: Path, model: torch.nn.Module,
                                      expected: dict[str, np.ndarray]) -> None:
    """``vitadapter convert HEAD --backbone-checkpoint BACKBONE`` writes one file that loads
    with the checkpoint alone, into the same model."""
    merged = tmp_path / "merged.safetensors"
    assert main(["convert", str(HEAD), str(merged), "--backbone-checkpoint",
                 str(BACKBONE)]) == 0
    alone = build_model(CONFIG, device="meta")
    load_checkpoint(alone, merged)
    crop = crop0(expected)[..., :64, :64]
    with torch.no_grad():
        assert torch.equal(alone(crop), model(crop))
    with pytest.raises(CheckpointError, match="already holds backbone weights"):
        load_checkpoint(build_model(CONFIG, device="meta"), merged, backbone=BACKBONE)


def test_transformers_backbone_gives_the_same_model(tmp_path: Path, model: torch.nn.Module,
                                                    expected: dict[str, np.ndarray]) -> None:
    """A DINOv3ViTModel safetensors (separate q/k/v, no k bias, no stored periods) loads into
    the same weights as Meta's file, and the key map round-trips."""
    hub = torch.load(BACKBONE, weights_only=True)
    cfg = model.config.backbone
    hf = dinov3.to_transformers(hub, cfg)
    assert "model.layer.0.attention.k_proj.bias" not in hf
    assert hf["embeddings.mask_token"].shape == (1, 1, 64)
    back = dinov3.from_transformers(hf, cfg)
    assert set(back) == set(hub)
    for key in hub:
        assert torch.equal(back[key], hub[key] if "qkv.bias" not in key or "mask" in key
                           else hub[key] * hub[key.replace("bias", "bias_mask")]), key
    path = tmp_path / "model.safetensors"
    save_safetensors(hf, path, {})
    other = build_model(CONFIG, device="meta")
    load_checkpoint(other, HEAD, backbone=path)
    crop = crop0(expected)[..., :64, :64]
    with torch.no_grad():
        assert torch.equal(other(crop), model(crop))


def test_backbone_file_must_be_a_backbone() -> None:
    cfg = build_model(CONFIG, device="meta").config.backbone
    with pytest.raises(CheckpointError, match="is not a backbone file"):
        read_backbone_checkpoint(REFERENCE / "checkpoint.pth", cfg)


# -- the photo end to end: Meta's test pipeline around the model ------------------------------

@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(config=CONFIG, checkpoint=HEAD, backbone_checkpoint=BACKBONE, device="cpu")


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
@pytest.mark.parametrize("run", ["ss", "tta"])
def test_label_map_is_metas(segmenter: Segmenter, expected: dict[str, np.ndarray], run: str,
                            reference: bool) -> None:
    """Single scale and Meta's multi-scale + flip TTA: Meta's labels wherever its top-2 scores
    do not tie within float32 noise (the set's margins)."""
    with reference_path(reference):
        labels = segmenter.segment(SET / "input.png", tta=run == "tta").label_map
    clear = expected[f"{run}_label_map_top2_margin"] >= 1e-7
    assert clear.mean() > 0.99
    assert np.array_equal(labels[clear], expected[f"{run}_label_map"][clear])


def test_slide_canvas_is_metas(segmenter: Segmenter, expected: dict[str, np.ndarray]) -> None:
    """The averaged window scores: the set suggests 1e-5 for scores; the fast path's own
    formulations between the GEMMs (README, Speed) move a few sums by up to 1.2e-5."""
    canvas = segmenter.scores(SET / "input.png")
    np.testing.assert_allclose(canvas.max(0), expected["ss_slide_scores_max"][0], atol=2e-5)
    assert np.array_equal(canvas.argmax(0), expected["ss_slide_scores_argmax"][0])


@pytest.mark.parametrize("reference", [False, True], ids=["fast", "reference"])
def test_metas_bf16_einsum_option(expected: dict[str, np.ndarray], reference: bool) -> None:
    """``einsum_dtype="bf16"`` is Meta's unmodified cast: its label maps (information arrays of
    the set, which move 97 and 152 pixels away from the float32 maps), exactly on the reference
    kernels; on the fast path a last-bit float32 difference can move a bf16 rounding, so at most
    0.05 % of the pixels may differ."""
    cfg = load_config_file(CONFIG)
    cfg = cfg.replace(inference=dataclasses.replace(cfg.inference, einsum_dtype="bf16"))
    segmenter = Segmenter(config=cfg, checkpoint=HEAD, backbone_checkpoint=BACKBONE,
                          device="cpu")
    for run in ("ss", "tta"):
        with reference_path(reference):
            labels = segmenter.segment(SET / "input.png", tta=run == "tta").label_map
        bf16 = expected[f"{run}_label_map_bf16einsum"]
        if reference:
            assert np.array_equal(labels, bf16)
        else:
            assert (labels != bf16).mean() <= 5e-4
        assert (labels != expected[f"{run}_label_map"]).sum() > 90


def test_cli_segments_with_the_two_files(tmp_path: Path,
                                         expected: dict[str, np.ndarray]) -> None:
    assert main(["segment", str(SET / "input.png"), "--out", str(tmp_path), "--config",
                 str(CONFIG), "--checkpoint", str(HEAD), "--backbone-checkpoint",
                 str(BACKBONE), "--device", "cpu"]) == 0
    labels = np.asarray(Image.open(tmp_path / "input_labels.png"))
    clear = expected["ss_label_map_top2_margin"] >= 1e-7
    assert np.array_equal(labels[clear], expected["ss_label_map"][clear])
    record = json.loads((tmp_path / "input.json").read_text())
    assert record["backbone_checkpoint_sha256"] == sha256_of(BACKBONE)


def test_onnx_export_runs_metas_pipeline_without_torch(tmp_path: Path, model: torch.nn.Module,
                                                       expected: dict[str, np.ndarray]) -> None:
    """export-onnx of the DINOv3 segmentor (RoPE tables stored as constants for the crop):
    onnxruntime's scores are PyTorch's and its labels Meta's outside ties."""
    pytest.importorskip("onnxruntime")
    from vitadapter.backends.onnx_export import export_onnx, verify_export

    path = export_onnx(model, tmp_path / "dinov3.onnx", weights="tiny")
    assert verify_export(model, path) < 1e-4
    labels = Segmenter.from_onnx(path).segment(SET / "input.png").label_map
    clear = expected["ss_label_map_top2_margin"] >= 1e-7
    assert np.array_equal(labels[clear], expected["ss_label_map"][clear])
