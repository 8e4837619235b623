"""Generated over every registered preset: it builds (on the meta device, no weights), predicts
its dataset's number of classes at the head's resolution, and its state dict equals the official
model's key manifest wherever one is in tests/data/reference/manifests."""

from __future__ import annotations

import json

import pytest
import torch

from vitadapter import PRESETS, build_model
from vitadapter.modeling.adapter import VIT_PARTS
from vitadapter.modeling.backbones import dinov3
from vitadapter.modeling.segmentor import meta_key

from .conftest import REFERENCE

# Manifests (key, shape, dtype of an official model built from its config) by preset.
MANIFESTS = {
    "cocostuff164k-beit-adapter-l-m2f-896": "manifest-beit-adapter-l-m2f-cocostuff164k-896.json",
    "ade20k-deit-adapter-t-upernet-512": "manifest-upernet_deit_adapter_tiny_512_160k_ade20k.json",
    "ade20k-augreg-adapter-l-upernet-512":
        "manifest-upernet_augreg_adapter_large_512_160k_ade20k.json",
    "ade20k-beit-adapter-l-upernet-640":
        "manifest-upernet_beit_adapter_large_640_160k_ade20k_ss.json",
    "cocostuff10k-beit-adapter-b-m2f-512":
        "manifest-mask2former_beit_adapter_base_512_40k_cocostuff10k_ss.json",
    "pascalcontext59-beit-adapter-l-m2f-480":
        "manifest-mask2former_beit_adapter_large_480_40k_pascal_context_59_ss.json",
}
NUM_CLASSES = {"coco-stuff164k": 171, "coco-stuff10k": 171, "ade20k": 150, "cityscapes": 19,
               "pascal-context-59": 59}


def manifest(name: str) -> dict:
    return json.loads((REFERENCE / "manifests" / MANIFESTS[name]).read_text())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_with_its_dataset_classes(name):
    cfg = PRESETS[name]
    model = build_model(name, device="meta")
    assert model.num_classes == NUM_CLASSES[cfg.dataset] == cfg.num_classes
    size = cfg.inference.crop_size[0]
    assert tuple(cfg.inference.crop_size) == (size, size)
    if cfg.backbone.kind == "beit":
        assert size == cfg.backbone.img_size
    with torch.no_grad():
        scores = model(torch.empty(1, 3, size, size, device="meta"))
    scale = 1 if cfg.inference.pipeline == "dinov3" else 4  # Meta's scores at the crop's size
    assert scores.shape == (1, cfg.num_classes, size // scale, size // scale)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_preset_state_dict_equals_the_official_manifest(name):
    expected = manifest(name)
    model = build_model(name, device="meta")
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()}
    theirs = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in expected["keys"]}
    assert ours == theirs
    assert len(ours) == expected["num_keys"]
    assert sum(p.numel() for p in model.parameters()) == expected["num_parameters"]


def test_every_manifest_names_a_registered_preset():
    assert set(MANIFESTS) <= set(PRESETS)


def test_every_manifest_file_is_used():
    files = {f.name for f in (REFERENCE / "manifests").glob("*.json")}
    dinov3_files = {f for pair in DINOV3_MANIFESTS.values() for f in pair if f}
    assert files == set(MANIFESTS.values()) | dinov3_files | {"hf-dinov3-vitl16-backbone.json"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_names_say_backbone_head_and_crop(name):
    cfg = PRESETS[name]
    head = "upernet" if cfg.head.kind == "upernet" else "m2f"
    assert ("beit" in name) == (cfg.backbone.kind == "beit")
    assert ("dinov3" in name) == (cfg.backbone.kind == "dinov3")
    if name in FINE_TUNING:  # this project's starting points: no trained head to download
        assert name.endswith(f"-{head}") and cfg.weights_url is None
        assert cfg.backbone_weights_url and cfg.weights_access
        return
    assert name.endswith(f"-{head}-{cfg.inference.crop_size[0]}")
    assert cfg.weights_url and cfg.weights_url.startswith(
        ("https://github.com/czczup/ViT-Adapter/releases/download/v0.",
         "https://dl.fbaipublicfiles.com/dinov3/"))
    assert "mIoU" in cfg.description


# -- DINOv3: Meta's hub backbones and its released 7B ADE20K head ----------------------------

FINE_TUNING = ("dinov3-vits16-adapter-m2f", "dinov3-vitb16-adapter-m2f",
               "dinov3-vitl16-adapter-m2f", "dinov3-vith16plus-adapter-m2f")
DINOV3_MANIFESTS = {
    "ade20k-dinov3-vit7b16-adapter-m2f-896": ("dinov3-vit7b16-backbone.json",
                                              "dinov3-vit7b16-ade20k-m2f-head.json"),
    "dinov3-vits16-adapter-m2f": ("dinov3-vits16-backbone.json", None),
    "dinov3-vitb16-adapter-m2f": ("dinov3-vitb16-backbone.json", None),
    "dinov3-vitl16-adapter-m2f": ("dinov3-vitl16-backbone.json", None),
}


def dinov3_manifest(file: str) -> dict[str, tuple[tuple[int, ...], str]]:
    entries = json.loads((REFERENCE / "manifests" / file).read_text())
    return {key: (tuple(shape), dtype) for key, (shape, dtype) in entries.items()}


def keys_and_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


@pytest.mark.parametrize("name", sorted(DINOV3_MANIFESTS))
def test_dinov3_preset_equals_metas_files(name):
    """The ViT's keys are those Meta's hub loads strictly; with the 7B preset, every other key
    is one of the released head file's, through the one key map (``meta_key``)."""
    backbone_file, head_file = DINOV3_MANIFESTS[name]
    state = build_model(name, device="meta").state_dict()
    vit = {k.removeprefix("backbone."): v for k, v in state.items()
           if k.startswith("backbone.") and k.split(".")[1] in VIT_PARTS}
    assert keys_and_shapes(vit) == dinov3_manifest(backbone_file)
    if head_file is not None:
        rest = {k: v for k, v in state.items() if k.removeprefix("backbone.") not in vit}
        head = {meta_key(k): v for k, v in dinov3_manifest(head_file).items()}
        assert keys_and_shapes(rest) == head


def test_transformers_key_map_round_trips_on_the_vitl_manifest():
    hf = {k: torch.empty(shape, device="meta")
          for k, (shape, _) in dinov3_manifest("hf-dinov3-vitl16-backbone.json").items()}
    cfg = PRESETS["dinov3-vitl16-adapter-m2f"].backbone
    hub = dinov3.from_transformers(hf, cfg)
    assert {k: s for k, (s, _) in keys_and_shapes(hub).items()} == {
        k: s for k, (s, _) in dinov3_manifest("dinov3-vitl16-backbone.json").items()}
    assert keys_and_shapes(dinov3.to_transformers(hub, cfg)) == keys_and_shapes(hf)


def test_presets_command_prints_a_table(capsys):
    from vitadapter.cli import main

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "dataset", "head", "params", "crop", "mIoU"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == set(PRESETS)
    # The official #Param of these releases: 36M, 364M, 571M.
    assert rows["ade20k-deit-adapter-t-upernet-512"] == ["ade20k", "upernet", "36M", "512",
                                                         "42.6"]
    assert rows["ade20k-augreg-adapter-l-upernet-512"][2] == "364M"
    assert rows["cocostuff164k-beit-adapter-l-m2f-896"] == ["coco-stuff164k", "mask2former",
                                                            "571M", "896", "51.7"]
