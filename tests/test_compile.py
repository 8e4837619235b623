"""torch.compile of the crop forward: the same labels as eager fp32, compiled code cached on
disk."""

from __future__ import annotations

import os

import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from vitadapter import Segmenter
from vitadapter.backends import compile as compile_backend
from vitadapter.backends.torch import TorchRunner
from vitadapter.cli import main
from vitadapter.errors import ConfigError

from .conftest import PHOTO, assert_official_labels, expected


# Measured on 2 cores: the first compile of the tiny model takes about 2 minutes (inductor's
# code generation and C++ builds), a later run with the cache in place about 10 s.
@pytest.mark.skipif(bool(os.environ.get("CI")), reason="compiling even the tiny model takes "
                    "~2 minutes on 2 cores (10 s once cached)")
def test_compiled_labels_equal_eager_and_official(tiny_models, segmenters, request,
                                                  monkeypatch):
    # A persistent, project-local cache (pytest's own): later runs only trace.
    monkeypatch.setenv(compile_backend.ENV_CACHE, str(request.config.cache.mkdir("compile")))
    model = tiny_models["tiny-upstream"]
    compiled = Segmenter(TorchRunner(model, compile=True))
    labels = compiled(PHOTO).label_map
    eager = segmenters["tiny-upstream"](PHOTO).label_map
    assert_official_labels(labels, "tiny-upstream")
    tie = expected("tiny-upstream")["label_map_tie"]
    assert not ((labels != eager) & ~tie).any()
    assert compile_backend.compile_cache_dir().is_dir()
    assert any(compile_backend.compile_cache_dir().iterdir())


def test_compile_refuses_int8(tiny_models):
    with pytest.raises(ConfigError, match="compile does not take int8"):
        TorchRunner(tiny_models["tiny-upstream"], "int8", compile=True)


def test_cache_folder_follows_vitadapter_home(monkeypatch, tmp_path):
    # Inductor writes its default into the variable when it is imported: not a choice.
    monkeypatch.setenv(compile_backend.ENV_CACHE, default_cache_dir())
    monkeypatch.setenv("VITADAPTER_HOME", str(tmp_path))
    assert compile_backend.use_compile_cache() == tmp_path / "compile"
    assert os.environ[compile_backend.ENV_CACHE] == str(tmp_path / "compile")
    assert torch._inductor.runtime.cache_dir_utils.cache_dir() == str(tmp_path / "compile")


def test_segment_onnx_refuses_compile(tmp_path, capsys):
    assert main(["segment", str(PHOTO), "--onnx", str(tmp_path / "m.onnx"), "--compile",
                 "--out", str(tmp_path)]) == 2
    assert "--onnx takes the model from the file; drop --compile" in capsys.readouterr().err


def test_cache_folder_set_by_the_user_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_backend.ENV_CACHE, str(tmp_path / "mine"))
    monkeypatch.setenv("VITADAPTER_HOME", str(tmp_path / "home"))
    assert compile_backend.use_compile_cache() == tmp_path / "mine"
