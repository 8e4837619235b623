"""Meta's DINOv3 test pipeline (``inference.pipeline = "dinov3"``): preprocessing and windows
against the tiny-dinov3-adapter-m2f set, the per-crop combination against its crop0 arrays, and
the merge against a plain torch restatement of Meta's slide_inference / make_inference /
evaluate_segmentation_model on synthetic crop scores."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitadapter import Segmenter
from vitadapter.backends.base import ModelInfo
from vitadapter.backends.onnx import OnnxRunner
from vitadapter.backends.onnx_metadata import OnnxMetadata
from vitadapter.backends.torch_merge import merge_on_device, run_windows_on_device
from vitadapter.config.dinov3 import (
    META_TTA_RATIOS,
    dinov3_inference,
    inference_from_meta,
)
from vitadapter.config.parse import config_from_dict
from vitadapter.config.schema import BackboneConfig, HeadConfig, ModelConfig, UperNetConfig
from vitadapter.errors import ConfigError, ImageError, OnnxModelError
from vitadapter.modeling.heads import mask2former
from vitadapter.modeling.heads.mask2former import crop_scores
from vitadapter.pipeline.images import load_image
from vitadapter.pipeline.merge import merge_views
from vitadapter.pipeline.preprocess import (
    View,
    augmented_views,
    fixed_side_size,
    tta_short_sides,
)
from vitadapter.pipeline.windows import SummedScores, run_windows, view_windows
from vitadapter.stream import segment_stream

from .conftest import REFERENCE, merge_peak

SET = REFERENCE / "tiny-dinov3-adapter-m2f"
SET_PHOTO = SET / "input.png"
SET_PIPELINE = json.loads((SET / "config.json").read_text())["pipeline"]
TIE = 1e-7  # the set's README: compare label maps where the top-2 margin is at least this


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(SET / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def set_views():
    cfg = inference_from_meta(SET_PIPELINE)
    rgb = load_image(SET_PHOTO)
    return augmented_views(rgb, cfg), augmented_views(rgb, cfg, tta=True)


def boxes(windows) -> list[list[int]]:
    return [[w.y1, w.y2, w.x1, w.x2] for w in windows]


# ---- preprocessing ----

def test_single_scale_view_is_metas_tensor_bit_for_bit(set_views, arrays):
    (view,), _ = set_views
    assert view.image.dtype == np.float32
    assert np.array_equal(view.image, arrays["img"][0])
    assert view.valid_shape == (128, 171) and view.original_shape == (150, 200)
    assert not view.flipped


def normalised(rgb: np.ndarray) -> np.ndarray:
    """torchvision's ``Normalize`` of ``PILToTensor(...).float()``, restated in torch."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    mean = torch.tensor(SET_PIPELINE["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(SET_PIPELINE["std"], dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).numpy()


def test_tta_views_are_metas_images_bit_for_bit(set_views, arrays):
    _, views = set_views
    assert len(views) == 10
    for i, view in enumerate(views):
        resized = arrays[f"tta_img_uint8_{i % 5}"]  # ratios in order, then the same mirrored
        flipped = i >= 5
        assert view.flipped == flipped and view.original_shape == (150, 200)
        assert view.valid_shape == resized.shape[:2] == view.image.shape[1:]
        # the normalisation is injective on uint8 values: equal floats = equal resized bytes
        assert np.array_equal(view.image, normalised(resized[:, ::-1] if flipped else resized))


def test_tta_short_sides_round_up_to_32_only_below_ratio_1():
    assert tta_short_sides(inference_from_meta(SET_PIPELINE)) == [128, 128, 128, 134, 140]
    assert tta_short_sides(dinov3_inference()) == [832, 864, 896, 940, 985]  # Meta's 896
    assert tta_short_sides(dinov3_inference(tta_ratios=(0.5, 1.01))) == [448, 904]


def test_fixed_side_size():
    assert fixed_side_size(150, 200, 128) == (128, 171)
    assert fixed_side_size(200, 150, 128) == (171, 128)   # portrait: the width is short
    assert fixed_side_size(300, 300, 128) == (128, 128)
    assert fixed_side_size(3000, 4000, 896) == (896, 1195)  # 1194.67 rounds half up


def test_absurdly_elongated_photo_is_refused():
    cfg = dinov3_inference()
    with pytest.raises(ImageError, match="too elongated"):
        augmented_views(np.zeros((1, 200_000, 3), np.uint8), cfg)


# ---- windows ----

def test_windows_are_the_sets_lists(set_views):
    cfg = inference_from_meta(SET_PIPELINE)
    (single,), views = set_views
    windows = view_windows(single, cfg.crop_size, cfg.stride, "dinov3")
    assert boxes(windows) == SET_PIPELINE["single_scale"]["windows_y1y2x1x2"]
    for view, listed in zip(views, SET_PIPELINE["tta"], strict=True):
        assert view.flipped == listed["hflip"]
        assert list(view.valid_shape) == listed["resized_hw"]
        windows = view_windows(view, cfg.crop_size, cfg.stride, "dinov3")
        assert boxes(windows) == listed["windows_y1y2x1x2"]


def metas_windows(h: int, w: int, crop: int, stride: int) -> list[list[int]]:
    """Meta's slide_inference loop, transcribed."""
    h_crop = w_crop = crop
    if h_crop > h and w_crop > w:
        h_crop = w_crop = min(h, w)
    out = []
    for hi in range(max(h - h_crop + stride - 1, 0) // stride + 1):
        for wi in range(max(w - w_crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(hi * stride + h_crop, h), min(wi * stride + w_crop, w)
            out.append([max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2])
    return out


def test_windows_follow_metas_loop_including_small_images():
    for h in range(32, 420, 29):
        for w in range(32, 420, 41):
            view = View(np.zeros((3, h, w), np.float32), (h, w), (h, w))
            assert boxes(view_windows(view, (128, 128), (85, 85), "dinov3")) \
                == metas_windows(h, w, 128, 85)
    # Meta's 896 at ratio 0.9 on a 4:3 photo: 832x896 windows; on a square one: one 832 square
    view = View(np.zeros((3, 832, 1109), np.float32), (832, 1109), (3000, 4000))
    assert boxes(view_windows(view, (896, 896), (596, 596), "dinov3")) \
        == [[0, 832, 0, 896], [0, 832, 213, 1109]]
    view = View(np.zeros((3, 832, 832), np.float32), (832, 832), (900, 900))
    assert boxes(view_windows(view, (896, 896), (596, 596), "dinov3")) == [[0, 832, 0, 832]]


# ---- the per-crop combination ----

def test_crop_scores_are_metas(arrays):
    cls = torch.from_numpy(arrays["crop0_pred_logits"])
    masks = torch.from_numpy(arrays["crop0_pred_masks"])
    np.testing.assert_allclose(F.softmax(cls, -1)[..., :-1].numpy(),
                               arrays["crop0_mask_cls_prob"], rtol=1e-6, atol=0)
    scores = crop_scores(cls, masks, (128, 128))
    assert scores.dtype == torch.float32 and scores.shape == (1, 150, 128, 128)
    np.testing.assert_allclose(scores[:, arrays["score_classes"]].numpy(),
                               arrays["crop0_scores"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores.max(1).values.numpy(), arrays["crop0_scores_max"],
                               rtol=0, atol=1e-6)
    assert np.array_equal(scores.argmax(1).numpy(), arrays["crop0_scores_argmax"])


def test_crop_scores_with_metas_bf16_cast(arrays):
    cls = torch.from_numpy(arrays["crop0_pred_logits"])
    masks = torch.from_numpy(arrays["crop0_pred_masks"])
    exact = crop_scores(cls, masks, (128, 128))
    cast = crop_scores(cls, masks, (128, 128), dtype=torch.bfloat16)
    assert cast.dtype == torch.float32
    assert torch.equal(cast, cast.bfloat16().float())  # bf16 values, returned as float32
    assert not torch.equal(cast, exact)
    # bf16 keeps 8 significant bits: operands and result each round by at most 2^-9
    torch.testing.assert_close(cast, exact, rtol=2**-6, atol=1e-4)


def test_crop_scores_of_a_non_square_crop(arrays):
    cls = torch.from_numpy(arrays["crop0_pred_logits"])
    masks = torch.from_numpy(arrays["crop0_pred_masks"])[..., :24, :]  # a 96x128 crop's masks
    scores = crop_scores(cls, masks, (96, 128))
    want = torch.einsum("bqc,bqhw->bchw", F.softmax(cls, -1)[..., :-1], F.interpolate(
        masks, size=(96, 128), mode="bilinear", align_corners=False).sigmoid())
    assert scores.shape == (1, 150, 96, 128)
    torch.testing.assert_close(scores, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch, rows, cols", [(1, 33, 33), (2, 24, 40), (1, 30, 17)],
                         ids=["square", "batch-of-2", "odd-sides"])
def test_crop_scores_in_bands_resize_every_row_as_the_whole_map(monkeypatch, batch, rows,
                                                                 cols):
    # Bands of 8 output rows (and a last partial one where 4 * rows is not a multiple of 8):
    # with one-hot class weights each score map is one query's resized mask, equal up to the
    # last bits that PyTorch's resize rounds by kernel (a separable one for outputs whose
    # height + width <= 128, as the odd sides' bands) and by where its threads split the work.
    monkeypatch.setattr(mask2former, "_BAND_PIXELS", 8 * 4 * cols)
    torch.manual_seed(0)
    masks = torch.randn(batch, 5, rows, cols) * 4
    one_hot = torch.eye(5).expand(batch, 5, 5)
    size = (4 * rows, 4 * cols)
    banded = mask2former._crop_scores_in_bands(one_hot, masks, size, 4)
    whole = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).sigmoid()
    torch.testing.assert_close(banded, whole, rtol=0, atol=2**-21)


def test_crop_scores_in_inference_are_the_einsum():
    torch.manual_seed(0)
    cls, masks = torch.randn(2, 100, 151), torch.randn(2, 100, 40, 48) * 4
    plain = crop_scores(cls, masks, (160, 192))              # autograd on: one einsum
    with torch.inference_mode():
        banded = crop_scores(cls, masks, (160, 192))         # bands of 84 and 76 rows
        three_times = crop_scores(cls, masks, (120, 144))    # not a power of two: one einsum
    torch.testing.assert_close(banded, plain, rtol=0, atol=1e-6)
    assert torch.equal(banded.argmax(1), plain.argmax(1))
    assert torch.equal(three_times, crop_scores(cls, masks, (120, 144)))


# ---- the merge, on synthetic crop scores ----

CLASSES = 7


def synthetic_config(**changes) -> ModelConfig:
    """A 7-class model with Meta's pipeline at crop 96 / stride 64: ratio 0.6 gives 64-pixel
    short sides (non-square 64x96 windows), 0.3 an image smaller than the crop both ways
    (32x32 windows), 1.25 a 2x4 grid."""
    inference = dinov3_inference(short_side=96, crop=96, stride=64,
                                 tta_ratios=(0.3, 0.6, 1.0, 1.25), **changes)
    return ModelConfig(backbone=BackboneConfig(kind="vit", use_rel_pos_bias=False),
                       head=HeadConfig(num_things_classes=CLASSES, num_stuff_classes=0),
                       inference=inference, dataset="synthetic")


class SyntheticRunner:
    """Crop scores in [0, 1] at the crop's size, from the crop's pixels and the position in the
    crop (so overlapping windows disagree), per the dinov3 runner contract."""

    device = "cpu"

    def __init__(self, config: ModelConfig) -> None:
        self.info = ModelInfo.of(config)
        rng = np.random.default_rng(3)
        self.weights = rng.standard_normal((CLASSES, 3)).astype(np.float32)
        self.tilt = rng.standard_normal((CLASSES, 2)).astype(np.float32)
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        _, _, h, w = crops.shape
        assert h % 32 == 0 and w % 32 == 0, "the contract: multiples of 32"
        self.shapes.append(crops.shape)
        y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        x = np.linspace(-1, 1, w, dtype=np.float32)[None]
        position = self.tilt[:, :1, None] * y + self.tilt[:, 1:, None] * x
        # crop by crop: the same numbers whatever the batch
        logits = [np.einsum("kc,chw->khw", self.weights, crop) + position for crop in crops]
        return (1 / (1 + np.exp(-np.stack(logits)))).astype(np.float32)


def metas_slide(img: torch.Tensor, runner: SyntheticRunner, crop: int,
                stride: int) -> torch.Tensor:
    """``slide_inference`` (m2f, float32 einsum) restated: crops predicted, padded into the
    canvas, divided by the int8 count."""
    _, _, h, w = img.shape
    preds = torch.zeros((1, CLASSES, h, w))
    count = torch.zeros((1, 1, h, w), dtype=torch.int8)
    for y1, y2, x1, x2 in metas_windows(h, w, crop, stride):
        pred = torch.from_numpy(runner(img[:, :, y1:y2, x1:x2].numpy()))
        preds += F.pad(pred, (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def metas_map(views: list[View], runner: SyntheticRunner, crop: int,
              stride: int) -> torch.Tensor:
    """``make_inference`` per image (resize to the photo, flip back, softmax) summed and
    divided by the number of images, as ``evaluate_segmentation_model``."""
    height, width = views[0].original_shape
    total = torch.zeros(1, CLASSES, height, width)
    for view in views:
        pred = F.interpolate(metas_slide(torch.from_numpy(view.image)[None], runner, crop,
                                         stride), size=(height, width), mode="bilinear",
                             align_corners=False)
        if view.flipped:
            pred = pred.flip(-1)
        total += F.softmax(pred, dim=1)
    return (total / len(views))[0]


def synthetic_photo(height: int = 90, width: int = 170) -> np.ndarray:
    coarse = np.random.default_rng(7).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    return np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy(coarse).permute(2, 0, 1)[None].float(), size=(height, width),
        mode="bicubic", align_corners=False)[0].clamp(0, 255).round().byte().permute(1, 2, 0))


def assert_metas_labels(labels: np.ndarray, final: torch.Tensor) -> None:
    top2 = final.topk(2, dim=0).values
    clear = (top2[0] - top2[1]).numpy() >= TIE
    assert clear.mean() > 0.99  # the comparison covers nearly every pixel
    assert np.array_equal(labels[clear], final.argmax(0).numpy()[clear])


@pytest.mark.parametrize("tta", [False, True])
def test_labels_are_metas(tta):
    runner = SyntheticRunner(synthetic_config())
    photo = synthetic_photo()
    views = augmented_views(photo, runner.info.config.inference, tta)
    result = Segmenter(runner, tta=tta).segment(photo)
    assert_metas_labels(result.label_map, metas_map(views, runner, 96, 64))
    assert len(np.unique(result.label_map)) >= 3
    if tta:  # every kind of window ran: 32x32, non-square 64x96, 96x96
        assert {s[2:] for s in runner.shapes} >= {(32, 32), (64, 96), (96, 96)}


def test_portrait_photo_labels_are_metas():
    runner = SyntheticRunner(synthetic_config())
    photo = synthetic_photo(170, 90).copy()
    views = augmented_views(photo, runner.info.config.inference, tta=True)
    assert {v.image.shape[2] for v in views} == {32, 64, 96, 120}  # the width is short
    labels = Segmenter(runner, tta=True).segment(photo).label_map
    assert_metas_labels(labels, metas_map(views, runner, 96, 64))


def test_scores_are_metas_slide_canvas():
    runner = SyntheticRunner(synthetic_config())
    photo = synthetic_photo()
    (view,) = augmented_views(photo, runner.info.config.inference)
    got = Segmenter(runner).scores(photo)
    assert np.array_equal(got, metas_slide(torch.from_numpy(view.image)[None], runner, 96,
                                           64)[0].numpy())


def torch_forward(runner: SyntheticRunner, device: str):
    def forward(crops: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(runner(crops.cpu().numpy())).to(device)
    return forward


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("tta", [False, True])
def test_device_merge_equals_numpy_merge(device, tta):
    runner = SyntheticRunner(synthetic_config())
    cfg = runner.info.config.inference
    views = augmented_views(synthetic_photo(), cfg, tta)
    slides = [run_windows(v, runner, cfg.crop_size, cfg.stride, 2, "dinov3") for v in views]
    on_device = [run_windows_on_device(v, torch_forward(runner, device), torch.device(device),
                                       cfg.crop_size, cfg.stride, 2, "dinov3") for v in views]
    for slide, moved in zip(slides, on_device, strict=True):
        assert np.array_equal(moved.canvas().cpu().numpy(), slide.canvas())
    want, got = merge_views(slides), merge_on_device(on_device)
    assert np.array_equal(got.labels, want.labels)
    assert np.array_equal(got.pixel_count, want.pixel_count)
    np.testing.assert_allclose(got.confidence, want.confidence, rtol=2e-6, atol=0)


def test_banded_merge_equals_whole_merge():
    runner = SyntheticRunner(synthetic_config())
    cfg = runner.info.config.inference
    views = augmented_views(synthetic_photo(), cfg, tta=True)
    slides = [run_windows(v, runner, cfg.crop_size, cfg.stride, 1, "dinov3") for v in views]
    for subset in (slides, slides[:1]):
        whole = merge_views(subset, band_rows=10_000)
        for rows in (1, 7):
            banded = merge_views(subset, band_rows=rows)
            assert np.array_equal(banded.labels, whole.labels)
            np.testing.assert_allclose(banded.confidence, whole.confidence, rtol=1e-6)


def test_merge_of_a_large_photo_never_holds_its_score_volume():
    """A 1200x1600 photo with 150 classes: 1.15 GB as one float32 volume (7.2 GB at 12
    megapixels); Meta's canvas at the resized size is held instead (here 150 x 96 x 128)."""
    rng = np.random.default_rng(0)
    view = View(np.zeros((3, 96, 128), np.float32), (96, 128), (1200, 1600))
    slide = SummedScores(view, view_windows(view, (96, 96), (64, 64), "dinov3"), (96, 96))
    for window in slide.windows:
        slide.add(rng.random((150, *window.shape), dtype=np.float32))
    merged, peak = merge_peak([slide])
    assert merged.labels.shape == (1200, 1600)
    assert peak < 300 * 2**20, f"merge peaked at {peak / 2**20:.0f} MiB"


def test_scores_at_another_size_are_refused():
    cfg = synthetic_config().inference
    view = View(np.zeros((3, 96, 128), np.float32), (96, 128), (96, 128))
    slide = SummedScores(view, view_windows(view, cfg.crop_size, cfg.stride, "dinov3"),
                         cfg.crop_size)
    with pytest.raises(ConfigError, match="scores at the crop's size: a 96x96 crop gave 24x24"):
        slide.add(np.zeros((CLASSES, 24, 24), np.float32))


class SyntheticDeviceRunner(SyntheticRunner):
    """The synthetic scores as the PyTorch backend gives them on an accelerator: its
    ``forward`` makes the stream window and merge on the device."""

    def __init__(self, config: ModelConfig, device: str) -> None:
        super().__init__(config)
        self.device = device

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self(crops.cpu().numpy())).to(self.device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_stream_batches_only_same_shaped_windows(device):
    runner = (SyntheticRunner(synthetic_config()) if device == "cpu"
              else SyntheticDeviceRunner(synthetic_config(), device))
    segmenter = Segmenter(runner, tta=True, batch_windows=4)
    photos = [synthetic_photo(), synthetic_photo(170, 90).copy()]
    out = list(segment_stream(segmenter, photos))
    assert max(s[0] for s in runner.shapes) == 4  # batches were formed
    for (_, got), photo in zip(out, photos, strict=True):
        want = segmenter.segment(photo)  # windows and merge in numpy
        assert np.array_equal(got.label_map, want.label_map)


# ---- the ONNX backend ----

class FakeSession:
    """An onnxruntime session of a graph traced for 96x96 crops (the synthetic scores)."""

    def __init__(self, runner: SyntheticRunner) -> None:
        self.runner = runner

    def get_inputs(self):
        return [SimpleNamespace(name="crops", shape=["batch", 3, 96, 96])]

    def get_outputs(self):
        return [SimpleNamespace(name="scores")]

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def run(self, names, feeds):
        return [self.runner(feeds["crops"])]


def test_onnx_runner_runs_metas_pipeline_from_its_config():
    runner = SyntheticRunner(synthetic_config())
    onnx = OnnxRunner(FakeSession(runner), OnnxMetadata(runner.info, "fp32", "random", "0"),
                      "model.onnx")
    photo = synthetic_photo()
    got = Segmenter(onnx).segment(photo)
    want = Segmenter(SyntheticRunner(synthetic_config())).segment(photo)
    assert np.array_equal(got.label_map, want.label_map)
    with pytest.raises(OnnxModelError, match="96x96 crops only, and this image needs a 32x32"):
        Segmenter(onnx, tta=True).segment(photo)


# ---- configuration ----

def test_config_round_trip_and_set_section():
    cfg = synthetic_config(einsum_dtype="bf16")
    assert config_from_dict(cfg.to_dict()) == cfg
    inference = inference_from_meta(SET_PIPELINE)
    assert (inference.pipeline, inference.short_side, inference.crop_size, inference.stride,
            inference.tta_ratios) == ("dinov3", 128, (128, 128), (85, 85), META_TTA_RATIOS)
    assert inference.mean == (123.675, 116.28, 103.53)
    with pytest.raises(ConfigError, match=r"unknown or unsupported field.*'pipeline\.flip'"):
        inference_from_meta({**SET_PIPELINE, "flip": True})
    with pytest.raises(ConfigError, match=r"'pipeline\.stride' must be a list of numbers"):
        inference_from_meta({**SET_PIPELINE, "stride": 85})
    with pytest.raises(ConfigError, match=r"missing field 'pipeline\.img_size'"):
        inference_from_meta({k: v for k, v in SET_PIPELINE.items() if k != "img_size"})


def test_existing_configs_stay_mmseg():
    cfg = ModelConfig()
    assert cfg.inference.pipeline == "mmseg" and cfg.inference.short_side is None
    old = cfg.to_dict()
    for key in ("pipeline", "short_side", "einsum_dtype"):
        del old["inference"][key]
    assert config_from_dict(old) == cfg  # files written before the switch read as before


@pytest.mark.parametrize(("changes", "message"), [
    ({"pipeline": "meta"}, "'inference.pipeline' must be one of 'mmseg', 'dinov3', got 'meta'"),
    ({"einsum_dtype": "fp16"}, "'inference.einsum_dtype' must be one of 'fp32', 'bf16', got "
                               "'fp16'"),
    ({"short_side": None}, "the dinov3 pipeline needs inference.short_side"),
    ({"to_rgb": False}, "inference.to_rgb must be true"),
    ({"tta_ratios": (0.9, 0.0)}, r"'inference.tta_ratios' must be positive, got \(0.9, 0.0\)"),
    ({"tta_ratios": ()}, "inference.tta_ratios must hold at least one ratio"),
    ({"mean": (1.0, 2.0)}, r"'inference.mean' must be a list of 3 values"),
])
def test_bad_dinov3_settings(changes, message):
    cfg = synthetic_config()
    with pytest.raises(ConfigError, match=message):
        cfg.replace(inference=replace(cfg.inference, **changes))


def test_dinov3_settings_need_the_dinov3_pipeline():
    with pytest.raises(ConfigError, match="belong to the dinov3 pipeline"):
        ModelConfig(inference=replace(ModelConfig().inference, einsum_dtype="bf16"))
    with pytest.raises(ConfigError, match="belong to the dinov3 pipeline"):
        ModelConfig(inference=replace(ModelConfig().inference, short_side=896))
    cfg = synthetic_config()
    with pytest.raises(ConfigError, match=r"a UperNet head needs inference\.pipeline 'mmseg'"):
        cfg.replace(head=UperNetConfig(in_channels=(1024,) * 4, num_classes=7))
