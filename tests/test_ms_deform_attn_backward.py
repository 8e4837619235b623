"""Gradients of the fast multi-scale deformable attention against autograd of the reference."""

from __future__ import annotations

import importlib

import pytest
import torch

from vitadapter.ops import ms_deform_attn, ms_deform_attn_reference, reference_path

from .test_ms_deform_attn import Shapes, assert_close, make_inputs

msda_module = importlib.import_module("vitadapter.ops.ms_deform_attn")
FastFunction = msda_module._MSDeformAttnFast

# A 224 crop's pixel decoder: 1/8, 1/16, 1/32 levels, 8 heads of 32 dims, 4 points, every
# position a query.
DECODER_224 = [(28, 28), (14, 14), (7, 7)]


def fast_function(shapes: Shapes):
    return lambda value, locations, weights: FastFunction.apply(value, shapes, locations,
                                                                weights)


def gradients(fn, value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor,
              grad_out: torch.Tensor, needed: tuple[bool, bool, bool] = (True, True, True),
              ) -> list[torch.Tensor | None]:
    """Gradients of <fn(value, locations, weights), grad_out> w.r.t. the ``needed`` inputs
    (None for the others)."""
    inputs = [t.detach().requires_grad_(need)
              for t, need in zip((value, locations, weights), needed, strict=True)]
    out = fn(*inputs)
    wanted = [t for t in inputs if t.requires_grad]
    grads = iter(torch.autograd.grad(out, wanted, grad_out))
    return [next(grads) if t.requires_grad else None for t in inputs]


def away_from_grid_lines(locations: torch.Tensor, shapes: Shapes,
                         margin: float = 1e-3) -> torch.Tensor:
    """Moves every coordinate whose pixel position ``loc * W - 0.5`` lies within ``margin``
    pixels of an integer by 0.01 pixels. The two paths round that position differently by an
    ulp, and on a grid line bilinear interpolation has a kink: its gradient jumps."""
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)[:, None]
    pixel = locations.double() * sizes - 0.5
    near = (pixel - pixel.round()).abs() < margin
    return torch.where(near, (pixel + 0.01 + 0.5) / sizes, locations.double()).to(
        locations.dtype)


def model_like_inputs(shapes: Shapes, heads: int, dim: int, points: int, seed: int = 0,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every position a query sampling around itself (offsets of about two pixels of each
    level), softmax-ed weights; one query in 16 samples far outside."""
    gen = torch.Generator().manual_seed(seed)
    refs = []
    for h, w in shapes:
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                indexing="ij")
        refs.append(torch.stack((xs, ys), -1).view(-1, 2))
    ref = torch.cat(refs)
    queries, levels = ref.shape[0], len(shapes)
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    offsets = torch.randn(1, queries, heads, levels, points, 2, generator=gen) * 2
    locations = ref[None, :, None, None, None, :] + offsets / sizes[:, None, :]
    locations[:, ::16] = -0.5 + 2 * torch.rand(locations[:, ::16].shape, generator=gen)
    weights = torch.randn(1, queries, heads, levels * points, generator=gen).softmax(-1)
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, dim, generator=gen)
    return value, away_from_grid_lines(locations, shapes), weights.view(
        1, queries, heads, levels, points)


def special_locations(shape: torch.Size, seed: int = 1) -> torch.Tensor:
    """Locations on pixel centres (integer pixel positions for every level of DECODER_224 and
    of power-of-two levels), on the map's edges, one pixel outside (pixel -1 and W exactly for
    8-wide levels) and far outside: all exact in binary, so both paths compute the same pixel
    positions."""
    special = torch.tensor([1 / 8, 3 / 8, 5 / 8, 7 / 8, 1 / 4, 3 / 4, 1 / 2, 1 / 16, 0.0, 1.0,
                            -1 / 16, 17 / 16, -1 / 32, 33 / 32, -0.25, 1.25, -50.0, 1e6])
    gen = torch.Generator().manual_seed(seed)
    return special[torch.randint(len(special), shape, generator=gen)]


def assert_gradients_close(actual: list, expected: list, rel: float) -> None:
    for name, a, e in zip(("value", "locations", "weights"), actual, expected, strict=True):
        assert (a is None) == (e is None), name
        if a is not None:
            assert a.dtype == e.dtype and a.shape == e.shape, name
            assert_close(a, e, rel=rel)


@pytest.mark.parametrize(("shapes", "batch", "heads", "dim", "queries", "points"), [
    ([(3, 4), (2, 2)], 2, 2, 3, 4, 2),
    ([(5, 3), (1, 1), (2, 3)], 1, 1, 2, 3, 1),  # a 1x1 level
])
def test_gradcheck_float64(shapes, batch, heads, dim, queries, points):
    value, locations, weights = (t.double() for t in make_inputs(
        shapes, batch, heads, dim, queries, points, seed=3))
    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(fast_function(shapes), inputs)


@pytest.mark.parametrize("chunk_rows", [None, 40])  # default, and one query per chunk
@pytest.mark.parametrize("needed", [(True, True, True), (True, False, False),
                                    (False, True, False), (False, False, True),
                                    (False, True, True)])
def test_float64_gradients_equal_the_reference(monkeypatch, chunk_rows, needed):
    if chunk_rows:
        monkeypatch.setattr(msda_module, "_CHUNK_ROWS", chunk_rows)  # 2 x 2 x 2 x 4 = 32 rows
    shapes = [(7, 5), (4, 6)]
    value, locations, weights = (t.double() for t in make_inputs(shapes, 2, 2, 3, 11, 2))
    grad_out = torch.randn(2, 11, 2 * 3, dtype=torch.float64)
    fast = gradients(fast_function(shapes), value, locations, weights, grad_out, needed)
    reference = gradients(lambda *a: ms_deform_attn_reference(a[0], shapes, *a[1:]),
                          value, locations, weights, grad_out, needed)
    assert_gradients_close(fast, reference, rel=1e-12)


def test_float64_gradients_on_borders_and_outside():
    """Exactly on pixel centres and edges, one pixel out (pixel -1: the corner at 0 still has
    a slope, as in grid_sample; pixel W: none) and beyond (clamped: no gradient at all)."""
    shapes = [(8, 8), (4, 2), (2, 4)]
    value, locations, weights = (t.double() for t in make_inputs(shapes, 1, 2, 3, 40, 3))
    locations = special_locations(locations.shape).double()
    grad_out = torch.randn(1, 40, 6, dtype=torch.float64)
    fast = gradients(fast_function(shapes), value, locations, weights, grad_out)
    reference = gradients(lambda *a: ms_deform_attn_reference(a[0], shapes, *a[1:]),
                          value, locations, weights, grad_out)
    assert_gradients_close(fast, reference, rel=1e-12)
    far = locations.abs().amax(-1) > 10
    assert far.any() and (fast[1][far] == 0).all() and (fast[2][far] == 0).all()


def fast_and_reference_gradients(value, shapes, locations, weights, grad_out):
    fn = lambda *a: ms_deform_attn(a[0], shapes, *a[1:])  # noqa: E731
    fast = gradients(fn, value, locations, weights, grad_out)
    with reference_path():
        reference = gradients(fn, value, locations, weights, grad_out)
    return fast, reference


@pytest.mark.parametrize("where", ["around_queries", "special"])
def test_float32_gradients_at_decoder_shapes(where, monkeypatch):
    value, locations, weights = model_like_inputs(DECODER_224, heads=8, dim=32, points=4)
    if where == "special":
        locations = special_locations(locations.shape)
        monkeypatch.setattr(msda_module, "_CHUNK_ROWS", 1 << 16)  # several chunks
    grad_out = torch.randn(1, locations.shape[1], 8 * 32, generator=torch.Generator()
                           .manual_seed(2))
    calls = []
    monkeypatch.setattr(FastFunction, "apply", lambda *a, _apply=FastFunction.apply: (
        calls.append(1), _apply(*a))[1])
    fast, reference = fast_and_reference_gradients(value, DECODER_224, locations, weights,
                                                   grad_out)
    assert len(calls) == 1
    assert_gradients_close(fast, reference, rel=1e-4)


def test_half_precision_value_gradient():
    shapes = [(7, 5), (3, 3)]
    value, locations, weights = make_inputs(shapes, 2, 2, 4, 9, 2)
    grad_out = torch.randn(2, 9, 8).bfloat16()
    fast, reference = fast_and_reference_gradients(value.bfloat16(), shapes, locations,
                                                   weights, grad_out)
    assert fast[0].dtype == torch.bfloat16
    assert_gradients_close(fast, reference, rel=1e-2)


def test_no_queries():
    shapes = [(3, 3)]
    value, locations, weights = make_inputs(shapes, 1, 2, 2, 0, 2)
    value.requires_grad_()
    ms_deform_attn(value, shapes, locations, weights).sum().backward()
    assert value.grad is not None and (value.grad == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gradients_match_cpu_reference():
    value, locations, weights = model_like_inputs(DECODER_224, heads=8, dim=32, points=4)
    locations[:, :100] = special_locations(locations[:, :100].shape)
    grad_out = torch.randn(1, locations.shape[1], 8 * 32)
    expected = gradients(lambda *a: ms_deform_attn_reference(a[0], DECODER_224, *a[1:]),
                         value, locations, weights, grad_out)
    cuda = [t.cuda() for t in (value, locations, weights, grad_out)]
    fast, reference = fast_and_reference_gradients(cuda[0], DECODER_224, *cuda[1:])
    for grads in (fast, reference):
        assert all(g.device.type == "cuda" for g in grads)
        assert_gradients_close([g.cpu() for g in grads], expected, rel=1e-4)
