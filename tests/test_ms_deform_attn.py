"""Multi-scale deformable attention: fast path against the reference, the reference by hand."""

from __future__ import annotations

import importlib

import pytest
import torch

from vitadapter.ops import ms_deform_attn, ms_deform_attn_reference, reference_path

# The package re-exports the function under the module's name.
msda_module = importlib.import_module("vitadapter.ops.ms_deform_attn")

Shapes = list[tuple[int, int]]


def make_inputs(shapes: Shapes, batch: int, heads: int, dim: int, queries: int, points: int,
                low: float = -0.3, high: float = 1.3, seed: int = 0,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, dim, generator=gen)
    locations = low + (high - low) * torch.rand(batch, queries, heads, len(shapes), points, 2,
                                                generator=gen)
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=gen)
    return value, locations, weights


def fast_and_reference(value: torch.Tensor, shapes: Shapes, locations: torch.Tensor,
                       weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fast = ms_deform_attn(value, shapes, locations, weights)
    with reference_path():
        reference = ms_deform_attn(value, shapes, locations, weights)
    return fast, reference


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    scale = max(float(expected.abs().max()), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale)


@pytest.mark.parametrize(("shapes", "batch", "heads", "dim", "queries", "points"), [
    ([(7, 5), (1, 1), (4, 6)], 2, 3, 4, 13, 2),   # odd sizes, a 1x1 level, batch and heads
    ([(6, 6)], 1, 1, 8, 5, 4),                     # one level, one head
    ([(3, 9), (2, 2)], 3, 2, 3, 1, 1),             # a single query and point
    ([(5, 4), (3, 3)], 2, 4, 2, 0, 3),             # no queries at all
])
def test_fast_matches_reference(shapes, batch, heads, dim, queries, points):
    value, locations, weights = make_inputs(shapes, batch, heads, dim, queries, points)
    fast, reference = fast_and_reference(value, shapes, locations, weights)
    assert fast.shape == (batch, queries, heads * dim)
    assert_close(fast, reference)


def test_fast_matches_reference_on_borders_and_far_outside():
    shapes = [(4, 5), (3, 2)]
    value, locations, weights = make_inputs(shapes, 1, 2, 3, 10, 3)
    special = torch.tensor([0.0, 1.0, -1e-7, 1 + 1e-7, 0.5 / 5, 4.5 / 5, -0.5 / 5, 5.5 / 5,
                            -0.1, 1.1, -50.0, 50.0, 1e6, -1e6])
    gen = torch.Generator().manual_seed(1)
    picks = torch.randint(len(special), locations.shape, generator=gen)
    locations = special[picks]
    locations[0, 0] = 1e6
    locations[0, 1, :, :, :, 0] = -50.0
    fast, reference = fast_and_reference(value, shapes, locations, weights)
    assert_close(fast, reference)
    assert (fast[0, :2] == 0).all()


def test_fast_path_reads_zeros_beyond_the_borders_of_reused_memory():
    """The fast path's value table zeroes only its border (the interior is overwritten):
    memory that held NaNs a moment ago must still read as zero padding."""
    shapes = [(6, 5), (3, 4)]
    value, locations, weights = make_inputs(shapes, 2, 3, 4, 12, 2)
    locations[:, :6] = torch.tensor([-0.05, 1.05])[torch.randint(2, locations[:, :6].shape)]
    for _ in range(3):
        junk = torch.full((2 * 3 * 200 * 4,), float("nan"))
        del junk
        fast, reference = fast_and_reference(value, shapes, locations, weights)
        assert_close(fast, reference)
        assert not fast.isnan().any()


def test_fast_matches_reference_across_query_chunks(monkeypatch):
    monkeypatch.setattr(msda_module, "_CHUNK_ROWS", 100)  # 2 heads x 2 levels x 2 points x 4
    shapes = [(6, 7), (3, 4)]
    value, locations, weights = make_inputs(shapes, 2, 2, 5, 23, 2)
    fast, reference = fast_and_reference(value, shapes, locations, weights)
    assert_close(fast, reference)


def test_fast_path_does_not_depend_on_the_thread_count():
    """Bitwise: a one-thread server and a multi-thread client must agree on label maps."""
    shapes = [(40, 40), (20, 20)]
    value, locations, weights = make_inputs(shapes, 1, 4, 8, 2000, 4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ms_deform_attn(value, shapes, locations, weights)
        torch.set_num_threads(2)
        assert torch.equal(ms_deform_attn(value, shapes, locations, weights), single)
    finally:
        torch.set_num_threads(threads)


def test_spatial_shapes_as_tensor():
    shapes = [(4, 3), (2, 5)]
    value, locations, weights = make_inputs(shapes, 1, 2, 4, 6, 2)
    out = ms_deform_attn(value, torch.tensor(shapes), locations, weights)
    assert_close(out, ms_deform_attn(value, shapes, locations, weights), rel=0)


def test_half_precision_value_is_computed_in_float32():
    shapes = [(7, 5), (3, 3)]
    value, locations, weights = make_inputs(shapes, 2, 2, 4, 9, 2)
    value = value.bfloat16()
    fast, reference = fast_and_reference(value, shapes, locations, weights)
    assert fast.dtype == reference.dtype == torch.bfloat16
    exact = ms_deform_attn_reference(value.float(), shapes, locations, weights)
    assert_close(fast.float(), exact.bfloat16().float(), rel=1e-2)
    assert_close(fast.float(), reference.float(), rel=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu_reference(dtype):
    shapes = [(7, 5), (1, 1), (4, 6)]
    value, locations, weights = make_inputs(shapes, 2, 3, 4, 300, 2)
    value = value.to(dtype)
    expected = ms_deform_attn_reference(value.float(), shapes, locations, weights).to(dtype)
    fast, reference = fast_and_reference(value.cuda(), shapes, locations.cuda(), weights.cuda())
    for out in (fast, reference):
        assert out.device.type == "cuda" and out.dtype == dtype
        assert_close(out.cpu().float(), expected.float(),
                     rel=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("reference", [False, True])
def test_bilinear_by_hand(reference):
    """2x2 map, pixel centres at x, y in {0.25, 0.75}; head 1 holds 10x head 0."""
    grid = torch.tensor([1.0, 2.0, 3.0, 4.0])  # (0,0) (0,1) (1,0) (1,1), row-major
    value = torch.stack((grid, 10 * grid), dim=-1).view(1, 4, 2, 1)
    points = torch.tensor([
        [0.5, 0.5],    # centre of the map: mean of the four pixels
        [0.25, 0.25],  # centre of pixel (0, 0)
        [0.75, 0.25],  # centre of pixel (0, 1)
        [0.0, 0.0],    # corner: a quarter of pixel (0, 0), the rest is zero padding
        [1.0, 0.25],   # right border at row 0: half of pixel (0, 1)
        [0.5, 0.75],   # halfway between (1, 0) and (1, 1)
        [1.5, 0.5],    # outside: zero
        [-0.25, 0.5],  # exactly one pixel left of the map: zero
    ])
    expected = torch.tensor([2.5, 1.0, 2.0, 0.25, 1.0, 3.5, 0.0, 0.0])
    locations = points.view(1, 8, 1, 1, 1, 2).expand(1, 8, 2, 1, 1, 2)
    weights = torch.ones(1, 8, 2, 1, 1)
    with reference_path(reference):
        out = ms_deform_attn(value, [(2, 2)], locations, weights)
    torch.testing.assert_close(out, torch.stack((expected, 10 * expected), -1)[None])


@pytest.mark.parametrize("reference", [False, True])
def test_points_weighted_by_attention(reference):
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    locations = torch.tensor([[0.25, 0.25], [0.75, 0.75]]).view(1, 1, 1, 1, 2, 2)
    weights = torch.tensor([0.25, 0.75]).view(1, 1, 1, 1, 2)
    with reference_path(reference):
        out = ms_deform_attn(value, [(2, 2)], locations, weights)
    torch.testing.assert_close(out, torch.tensor([[[0.25 * 1 + 0.75 * 4]]]))


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Names of the implementations ms_deform_attn called."""
    seen: list[str] = []
    for name in ("ms_deform_attn_fast", "ms_deform_attn_reference"):
        original = getattr(msda_module, name)

        def spy(*args, _name=name, _original=original):
            seen.append(_name)
            return _original(*args)

        monkeypatch.setattr(msda_module, name, spy)
    return seen


def test_default_is_fast_and_reference_path_forces_reference(calls):
    shapes = [(3, 3)]
    inputs = make_inputs(shapes, 1, 1, 2, 4, 1)
    ms_deform_attn(inputs[0], shapes, *inputs[1:])
    with reference_path():
        ms_deform_attn(inputs[0], shapes, *inputs[1:])
        with reference_path(False):
            ms_deform_attn(inputs[0], shapes, *inputs[1:])
    assert calls == ["ms_deform_attn_fast", "ms_deform_attn_reference", "ms_deform_attn_fast"]


def test_gradients_use_the_differentiable_fast_path(calls):
    shapes = [(4, 4)]
    value, locations, weights = make_inputs(shapes, 1, 2, 2, 3, 2)
    value.requires_grad_()
    ms_deform_attn(value, shapes, locations, weights).sum().backward()
    assert calls == ["ms_deform_attn_fast"]
    assert value.grad is not None and value.grad.abs().sum() > 0
    with reference_path():
        ms_deform_attn(value, shapes, locations, weights).sum().backward()
    assert calls[-1] == "ms_deform_attn_reference"


@pytest.mark.parametrize(("change", "message"), [
    (lambda v, s, loc, w: (v[0], s, loc, w), r"value must be \(B, S, heads, D\)"),
    (lambda v, s, loc, w: (v, s, loc[..., 0], w), r"sampling_locations must be"),
    (lambda v, s, loc, w: (v, s, loc, w[..., :1]), r"attention_weights shape .* does not match"),
    (lambda v, s, loc, w: (v, [(3, 3), (2, 3)], loc, w), r"value has 25 positions"),
    (lambda v, s, loc, w: (v, [(4, 4), (3, 3)], loc[:, :, :, :1], w[:, :, :, :1]),
     r"1 levels but spatial_shapes has 2"),
    (lambda v, s, loc, w: (v[:, :, :1], s, loc, w), r"disagree on batch size or heads"),
    (lambda v, s, loc, w: (v[:1], s, loc, w), r"disagree on batch size or heads"),
])
def test_input_errors(change, message):
    shapes = [(4, 4), (3, 3)]
    value, locations, weights = make_inputs(shapes, 2, 2, 3, 5, 2)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*change(value, shapes, locations, weights))


def test_nan_locations_give_nan_as_the_reference_not_an_index_error():
    shapes = [(4, 5), (3, 2)]
    value, locations, weights = make_inputs(shapes, 1, 2, 3, 6, 3)
    locations[0, 1, 0, 0, 0, 0] = float("nan")  # head 0 of query 1
    locations[0, 3, 1, 1, 2, 1] = float("nan")  # head 1 of query 3
    fast, reference = fast_and_reference(value, shapes, locations, weights)
    nan = torch.isnan(reference)
    assert torch.equal(torch.isnan(fast), nan)
    assert nan.nonzero().tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 3, 3], [0, 3, 4],
                                      [0, 3, 5]]
    assert_close(fast[~nan], reference[~nan])
