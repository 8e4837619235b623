"""The full seed preset: strict loading of a synthetic checkpoint with the official keys
(built on the meta device: no 2 GB of weights needed)."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from vitadapter import build_model, load_checkpoint
from vitadapter.config.presets import SEED_PRESET

from .conftest import REFERENCE

MANIFEST = json.loads(
    (REFERENCE / "manifests" / "manifest-beit-adapter-l-m2f-cocostuff164k-896.json").read_text())
DTYPES = {"float32": torch.float32, "int64": torch.int64}


@pytest.fixture(scope="module")
def synthetic_release(tmp_path_factory):
    """A release-style checkpoint: every released key, constant values stored as expanded
    views (a few bytes each on disk), plus a ``meta`` with classes and palette."""
    state = {}
    for entry in MANIFEST["keys"]:
        if not entry["in_released_checkpoint"]:
            continue
        shape, dtype = entry["shape"], DTYPES[entry["dtype"]]
        value = 0 if entry["key"].endswith("running_mean") else 1
        state[entry["key"]] = torch.full((1,) * len(shape), value, dtype=dtype).expand(shape)
    assert len(state) == MANIFEST["num_keys_in_released_checkpoint"]
    meta = {"CLASSES": [f"class{i}" for i in range(171)],
            "PALETTE": [[i, i, i] for i in range(171)]}
    folder = tmp_path_factory.mktemp("release")
    inner = folder / "mask2former_beit_adapter_large_896_80k_cocostuff164k.pth.tar"
    torch.save({"meta": meta, "state_dict": state}, inner)
    archive = folder / "mask2former_beit_adapter_large_896_80k_cocostuff164k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(inner, inner.name)
    return inner, archive


def test_synthetic_release_loads_strictly(synthetic_release):
    for path in synthetic_release:
        model = build_model(SEED_PRESET, device="meta")
        ckpt = load_checkpoint(model, path)
        assert ckpt.classes[170] == "class170"
        assert not any(t.is_meta for t in model.state_dict().values())
        block = model.backbone.blocks[23].attn
        assert block.relative_position_bias_table.shape == (12324, 16)
        assert model.state_dict()["backbone.blocks.23.attn.relative_position_index"].shape == (
            3137, 3137)
