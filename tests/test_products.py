"""The fast path's matrix products (``ops.linear``, ``ops.matmul_nt``): oneDNN's kernels where
they apply, the same values as PyTorch's operators, PyTorch's operators everywhere else."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitadapter.ops import Linear, activated, linear, matmul_nt, onednn_applies, reference_path
from vitadapter.ops.products import ENV, onednn_available

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="PyTorch built without oneDNN")


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_runs_only_on_the_fast_inference_path():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.inference_mode():
        assert onednn_applies(x, w)
        assert not onednn_applies(x.double(), w.double())
        with reference_path():
            assert not onednn_applies(x, w)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_applies(x, w)
    assert not onednn_applies(x, w)  # autograd on: training keeps PyTorch's operators


@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_linear_with_its_activation_equals_pytorchs(activation):
    x, w, b = torch.randn(2, 37, 48), torch.randn(24, 48), torch.randn(24)
    expected = {None: lambda t: t, "gelu": F.gelu, "relu": F.relu}[activation](F.linear(x, w, b))
    with torch.inference_mode():
        _close(linear(x, w, b, activation), expected)
    _close(linear(x, w, b, activation), expected)


def test_a_strided_weight_gives_the_dense_weights_answer():
    """A head's keys sliced out of a fused projection (a row stride of 3 x dim): copied to a
    dense weight first, which oneDNN's fast kernels need."""
    qkv = torch.randn(50, 3, 4, 16)
    keys, queries = qkv[:, 1, 2], torch.randn(30, 16)
    assert not keys.is_contiguous() and not keys.t().is_contiguous()
    with torch.inference_mode():
        _close(linear(queries, keys), queries @ keys.contiguous().t())
        _close(linear(queries, keys.t().contiguous().t()), queries @ keys.t())


@pytest.mark.parametrize("batch", [1, 2])
def test_matmul_nt_equals_the_batched_product(batch):
    a = torch.randn(6, 20).expand(batch, -1, -1)  # a weight shared by every sample
    b = torch.randn(batch, 20, 33).transpose(1, 2)  # a (B, C, HW) map's pixels as rows
    bias = torch.randn(6)
    expected = torch.baddbmm(bias.view(1, -1, 1), a, b.transpose(1, 2))
    with torch.inference_mode():
        _close(matmul_nt(a, b, bias), expected)
        _close(matmul_nt(a, b), expected - bias.view(1, -1, 1))
    _close(matmul_nt(a, b, bias), expected)


def test_linear_layer_is_an_nn_linear_with_the_same_state():
    torch.manual_seed(0)
    ours = Linear(8, 5)
    theirs = torch.nn.Linear(8, 5)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear) and ours.state_dict().keys() == {"weight", "bias"}
    x = torch.randn(3, 8)
    with torch.inference_mode():
        _close(ours(x), theirs(x))
        _close(activated(ours, x, "gelu"), F.gelu(theirs(x)))
        _close(activated(theirs, x, "relu"), F.relu(theirs(x)))  # any other layer: after it
    x.requires_grad_()
    ours(x).sum().backward()
    assert x.grad is not None and ours.weight.grad is not None


def test_the_environment_chooses_the_products(monkeypatch):
    monkeypatch.setenv(ENV, "mkl")
    assert not onednn_available()
    monkeypatch.setenv(ENV, " oneDNN ")
    assert onednn_available() == torch.backends.mkldnn.is_available()
    monkeypatch.setenv(ENV, "blas")
    with pytest.warns(UserWarning, match=r"VITADAPTER_MATMUL='blas' is not a choice: 'onednn'"):
        assert onednn_available() == torch.backends.mkldnn.is_available()
