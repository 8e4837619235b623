"""Choice between the fast kernels (default) and the straightforward reference path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_REFERENCE: ContextVar[bool] = ContextVar("vitadapter_reference_path", default=False)


def use_reference() -> bool:
    """True while :func:`reference_path` is active (``torch.compile`` reads it once, when it
    traces: compile under the path that is meant to run; ``backends.compile`` marks it so,
    which imports the compiler only when one is used)."""
    return _REFERENCE.get()


def fast_inference() -> bool:
    """True where the eager inference-only formulations apply (in-place activations, fused
    writes into preallocated outputs): autograd is off, the reference path is not active (it
    runs the official formulation, which the ONNX export traces) and ``torch.compile`` is not
    tracing (its compiler fuses the plain formulation itself, and cannot take writes into
    views of other tensors)."""
    return (not torch.is_grad_enabled() and not use_reference()
            and not torch.compiler.is_compiling())


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
