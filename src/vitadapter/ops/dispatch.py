"""Choice between the fast kernels (default) and the straightforward reference path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_REFERENCE: ContextVar[bool] = ContextVar("vitadapter_reference_path", default=False)


def use_reference() -> bool:
    """True while :func:`reference_path` is active."""
    return _REFERENCE.get()


def fast_inference() -> bool:
    """True where the inference-only formulations apply (in-place activations, fused
    writes into preallocated outputs): autograd is off and the reference path is not active
    (it runs the official formulation, which the ONNX export traces)."""
    return not torch.is_grad_enabled() and not use_reference()


@contextmanager
def reference_path(enabled: bool = True) -> Iterator[None]:
    """Run the model with the reference implementations (explicit attention, per-level
    ``grid_sample``), e.g. for parity checks and benchmarks::

        with vitadapter.ops.reference_path():
            scores = model(crop)
    """
    token = _REFERENCE.set(enabled)
    try:
        yield
    finally:
        _REFERENCE.reset(token)
