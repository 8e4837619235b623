"""``torch.compile`` (inductor) of the model, with the compiled artefacts cached on disk.

Inductor's FX-graph and AOTAutograd caches live in ``$TORCHINDUCTOR_CACHE_DIR``; unless that
is set, :func:`use_compile_cache` points it at ``$VITADAPTER_HOME/compile`` (default
``~/.cache/vitadapter/compile``), so that a second process with the same model, crop, batch
size, precision and thread count skips the code generation and the C++ builds and only traces
(seconds instead of minutes). Each new input shape compiles once more (``dynamic=False``:
static shapes give the fastest code). Compiled and eager forwards agree within float32
rounding; the labels are the same outside ties.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..ops import use_reference
from ..weights.download import cache_dir

ENV_CACHE = "TORCHINDUCTOR_CACHE_DIR"
# Inductor's own layout choice turns the convolutions channels-last, which on CPUs (oneDNN)
# runs the large 3x3 convolutions of the heads slower (136 against 189 GFLOP/s measured).
OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {"layout_optimization": False}


def compile_cache_dir() -> Path:
    """Where the compiled artefacts are kept: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set
    it, else ``$VITADAPTER_HOME/compile``. (Inductor itself writes its default, a folder in
    /tmp, into the variable as soon as it is imported: that value counts as unset.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # only to compile

    named = os.environ.get(ENV_CACHE)
    if named and os.path.abspath(named) != os.path.abspath(default_cache_dir()):
        return Path(named)
    return cache_dir() / "compile"


def use_compile_cache() -> Path:
    """Make inductor keep its caches in :func:`compile_cache_dir` (it reads the variable
    whenever it looks a cached artefact up) and return that folder."""
    folder = compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV_CACHE] = str(folder)
    return folder


def _prepare() -> None:
    """The on-disk cache, and the kernel-path switch read as a constant while tracing."""
    use_compile_cache()
    torch.compiler.assume_constant_result(use_reference)


def compile_module(module: nn.Module) -> Callable[..., torch.Tensor]:
    """``module`` compiled by inductor with static shapes and the on-disk cache; the
    compilation itself happens on the first call."""
    _prepare()
    return torch.compile(module, dynamic=False, options=OPTIONS)


def compile_in_place(module: nn.Module) -> None:
    """Compile ``module`` in place (its parameters and state-dict keys stay as they are), with
    static shapes and the on-disk cache."""
    _prepare()
    module.compile(dynamic=False, options=OPTIONS)
