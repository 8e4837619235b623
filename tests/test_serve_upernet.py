"""The HTTP service around a plain-ViT adapter + UperNet model (in process)."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from vitadapter import Segmenter
from vitadapter.serve.app import create_app

from .conftest import PHOTO, assert_official_labels


def test_service_segments_with_a_vit_adapter_upernet(upernet_models):
    name = "tiny-vit-adapter-upernet"
    with TestClient(create_app(Segmenter.from_model(upernet_models[name]))) as client:
        model = client.get("/v1/model").json()
        assert (model["name"], model["dataset"], model["num_classes"]) == (name, "ade20k", 150)
        assert model["classes"][2]["name"] == "sky"
        response = client.post("/v1/segment?format=labels", content=PHOTO.read_bytes(),
                               headers={"Content-Type": "image/png"})
        assert response.status_code == 200
        labels = np.asarray(Image.open(io.BytesIO(response.content)))
        assert_official_labels(labels.astype(np.int64), name)
        body = client.post("/v1/segment", content=PHOTO.read_bytes(),
                           headers={"Content-Type": "image/png"}).json()
    scores = [c["score"] for c in body["classes"]]
    assert scores and all(0 < s <= 1 for s in scores)
