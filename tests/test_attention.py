"""The fast attention (scaled_dot_product_attention, and ``ops.attention``'s explicit oneDNN
scores from ``EXPLICIT_TOKENS`` tokens on) against the explicit reference path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vitadapter.modeling.backbones.beit import Attention
from vitadapter.modeling.heads.mask2former import _bilinear_shrink
from vitadapter.modeling.heads.transformer_decoder import MultiheadAttention
from vitadapter.ops import attention, reference_path
from vitadapter.ops import self_attention as attention_module


def both_paths(module: torch.nn.Module, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        fast = module(*args)
        with reference_path():
            reference = module(*args)
    return fast, reference


def test_beit_attention_with_relative_position_bias():
    torch.manual_seed(0)
    attn = Attention(64, 4, (5, 7), qkv_bias=True, use_rel_pos_bias=True).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(std=1.0)
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    fast, reference = both_paths(attn, torch.randn(2, 5 * 7 + 1, 64))
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    # The bias is large enough to matter: without it the output is different.
    attn.relative_position_bias_table = None
    without_bias, _ = both_paths(attn, torch.randn(2, 5 * 7 + 1, 64))
    assert (without_bias - reference).abs().max() > 0.1


@pytest.mark.parametrize("limits", [{"_BIAS_ROWS": 15},
                                    {"_EXPLICIT_TOKENS": 36, "_SCORE_ROWS": 15}],
                         ids=["fused-blocks", "explicit-scores"])
def test_beit_attention_in_blocks_of_query_rows(monkeypatch, limits):
    """The fast path copies the bias for a few window rows of queries at a time: 35 patch
    queries (5 rows of 7) in blocks of 2 rows (the last one partial), in reverse order, and
    the cls query on its own equal the whole explicit computation; from _EXPLICIT_TOKENS tokens
    on (the CPU, no autograd) the blocks compute explicit scores with the bias added from the
    strided view."""
    from vitadapter.modeling.backbones import beit

    for name, value in limits.items():
        monkeypatch.setattr(beit, name, value)
    torch.manual_seed(1)
    attn = Attention(32, 2, (5, 7), qkv_bias=True, use_rel_pos_bias=True).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(std=1.0)
    fast, reference = both_paths(attn, torch.randn(3, 5 * 7 + 1, 32))
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)


def test_beit_attention_reuses_its_bias_buffer_in_and_out_of_inference_mode():
    torch.manual_seed(2)
    attn = Attention(32, 2, (4, 4), qkv_bias=True, use_rel_pos_bias=True).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(1, 17, 32)
    with torch.inference_mode():
        first = attn(x)
    with torch.no_grad():  # the inference-mode buffer cannot be written here: a new one
        second = attn(x)
    with torch.inference_mode():
        third = attn(x)
        with reference_path():
            reference = attn(x)
    for out in (first, second, third):
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_relative_position_bias_layout():
    attn = Attention(8, 2, (2, 3), qkv_bias=False, use_rel_pos_bias=True)
    with torch.no_grad():
        attn.relative_position_bias_table.copy_(torch.arange(2 * 18.0).view(18, 2))
    bias = attn.relative_position_bias()
    assert bias.shape == (2, 7, 7)
    # Head h at (i, j) reads table row index[i, j], column h.
    index = attn.state_dict()["relative_position_index"]
    assert torch.equal(bias[1], 2 * index.float() + 1)
    # The last three rows: cls -> token, token -> cls, cls -> cls.
    assert bias[0, 0, 3] == 2 * 15 and bias[0, 3, 0] == 2 * 16 and bias[0, 0, 0] == 2 * 17


def test_decoder_masked_attention_keeps_the_blocked_convention():
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).eval()
    query, memory = torch.randn(2, 5, 32), torch.randn(2, 12, 32)
    blocked = torch.rand(2, 1, 5, 12) < 0.6
    blocked[..., 0] = False  # no fully blocked row: the head unblocks those before attending
    fast, reference = both_paths(attn, query, memory, memory, blocked)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    # A query that may only attend to key 3 returns exactly that key's value projection.
    only_key3 = torch.ones(1, 1, 5, 12, dtype=torch.bool)
    only_key3[..., 3] = False
    fast, reference = both_paths(attn, query[:1], memory[:1], memory[:1], only_key3)
    w_v, b_v = attn.in_proj_weight.chunk(3)[2], attn.in_proj_bias.chunk(3)[2]
    with torch.inference_mode():
        expected = attn.out_proj(torch.nn.functional.linear(memory[:1, 3], w_v, b_v))
    for out in (fast, reference):
        torch.testing.assert_close(out[0], expected.expand(5, -1), rtol=0, atol=1e-5)


def test_head_unblocks_a_query_whose_mask_is_empty(tiny_models):
    head = tiny_models["tiny-upstream"].decode_head
    torch.manual_seed(0)
    query = torch.randn(1, head.query_feat.num_embeddings, head.query_feat.embedding_dim)
    with torch.inference_mode():
        embed = head.mask_embed(head.transformer_decoder.post_norm(query))[0]
        # Features = -e0 + b(y, x) w with w orthogonal to query 0's embedding e0: query 0's
        # mask is -|e0|^2 everywhere (empty), the others change sign with b.
        e0 = embed[0]
        w = torch.randn_like(e0)
        w -= (w @ e0) / (e0 @ e0) * e0
        b = 10 * torch.randn(8, 8)
        mask_features = -e0.view(-1, 1, 1) + b * w.view(-1, 1, 1)
        _, mask, blocked = head._predict(query, mask_features[None], (4, 4))
        below = torch.nn.functional.interpolate(mask, size=(4, 4), mode="bilinear").sigmoid() < 0.5
    below = below.flatten(2)[0]
    empty = below.all(-1)
    assert empty[0]
    assert not blocked[0, 0, empty].any()  # an empty mask attends everywhere
    assert torch.equal(blocked[0, 0, ~empty], below[~empty])
    assert blocked[0, 0, ~empty].any()


def test_attention_masks_from_mask_features_at_the_level_size(tiny_models):
    """Inference computes an attention mask from the mask features resized to its level: the
    resize and the product with the mask embedding commute, so the masks equal the resized
    full-size masks within float32 rounding, and so do the blocked positions away from 0."""
    head = tiny_models["tiny-upstream"].decode_head
    torch.manual_seed(0)
    query = torch.randn(1, head.query_feat.num_embeddings, head.query_feat.embedding_dim)
    features = torch.randn(1, head.mask_embed[-1].out_features, 16, 16)
    with torch.inference_mode():
        small = torch.nn.functional.interpolate(features, size=(8, 8), mode="bilinear")
        _, mask, blocked = head._predict(query, features, (8, 8), small)
        _, full, expected = head._predict(query, features, (8, 8))
        resized = torch.nn.functional.interpolate(full, size=(8, 8), mode="bilinear")
    assert mask.shape[-2:] == (8, 8) and full.shape[-2:] == (16, 16)
    torch.testing.assert_close(mask, resized, rtol=0, atol=1e-5)
    clear = resized.flatten(2).abs().unsqueeze(1) > 1e-4
    assert torch.equal(blocked[clear], expected[clear])
    assert 0 < blocked.sum() < blocked.numel()


@pytest.mark.parametrize(("shape", "size"), [
    ((1, 256, 128, 128), (64, 64)), ((1, 256, 128, 128), (16, 16)),  # even factors
    ((2, 3, 96, 128), (32, 32)),                                    # 3 (odd) and 4
    ((1, 2, 16, 16), (16, 16)),                                     # 1: the map itself
    ((1, 2, 17, 16), (8, 8)),                                       # no whole factor
])
def test_bilinear_shrink_is_the_bilinear_resize(shape, size):
    torch.manual_seed(0)
    x = torch.randn(shape)
    expected = torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                               align_corners=False)
    # The same two weights of 1/2 per axis; the sums may round in another order.
    torch.testing.assert_close(_bilinear_shrink(x, size), expected, rtol=0, atol=5e-7)


def test_inference_head_keeps_the_last_prediction(tiny_models):
    """The head without every prediction (inference) gives the last prediction of the full
    run, whose attention masks come from full-size masks, within float32 rounding."""
    model = tiny_models["tiny-upstream"]
    torch.manual_seed(0)
    with torch.inference_mode():
        feats = model.backbone(torch.randn(1, 3, *model.config.inference.crop_size))
        full = model.decode_head(feats)
        last = model.decode_head(feats, all_predictions=False)
    assert len(last.mask_logits) == 1 and len(full.mask_logits) > 1
    torch.testing.assert_close(last.cls_logits[0], full.cls_logits[-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(last.mask_logits[0], full.mask_logits[-1], rtol=0, atol=1e-5)


def test_long_ffn_inputs_run_in_blocks_of_rows():
    from vitadapter.modeling.layers import FFN

    torch.manual_seed(0)
    ffn = FFN(16, 64).eval()
    x = torch.randn(2, 5000, 16)  # three blocks of 2048 rows, the last one partial
    with torch.inference_mode():
        blocked = ffn(x)
        whole = x + ffn.layers(x)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-6)
    assert blocked.shape == x.shape


# -- ops.attention: unmasked self-attention (DINOv3, plain ViTs) ------------------------------

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="PyTorch built without oneDNN")


def _heads(batch: int, tokens: int, heads: int, dim: int) -> tuple[torch.Tensor, ...]:
    """q, k, v as a ViT makes them: (B, heads, N, D) views of one fused projection."""
    qkv = torch.randn(batch, tokens, 3, heads, dim).permute(2, 0, 3, 1, 4)
    return tuple(qkv.unbind(0))


def _forbid_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args, **_kwargs):
        raise AssertionError("the fused kernel ran")
    monkeypatch.setattr(attention_module, "F", SimpleNamespace(scaled_dot_product_attention=fail))


@needs_onednn
@pytest.mark.parametrize("scale", [None, 0.3])
def test_explicit_scores_equal_the_fused_kernel(monkeypatch, scale):
    q, k, v = _heads(2, 600, 3, 32)
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    # Blocks of 130 query rows: four whole ones and a last one of 80.
    monkeypatch.setattr(attention_module, "_BLOCK_SCORES", 130 * 600)
    _forbid_fused_kernel(monkeypatch)
    with torch.inference_mode():
        out = attention(q, k, v, scale=scale)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Heads merged back into tokens without a copy.
    assert out.transpose(1, 2).is_contiguous()


def test_short_sequences_training_and_the_reference_path_keep_the_fused_kernel():
    q, k, v = _heads(1, attention_module.EXPLICIT_TOKENS, 2, 16)
    expected = F.scaled_dot_product_attention(q, k, v)
    with torch.inference_mode():
        short = attention(q[:, :, :-1], k, v)
        with reference_path():
            assert torch.equal(attention(q, k, v), expected)
    assert torch.equal(short, F.scaled_dot_product_attention(q[:, :, :-1], k, v))
    q.requires_grad_(True)
    out = attention(q, k, v)  # autograd on
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    out.sum().backward()
    assert q.grad is not None


@needs_onednn
def test_the_base_2_softmax_shifts_the_blocks_whose_sums_leave_its_range():
    """Scores beyond 128 overflow exp2 and a row far below zero sums to nothing: those
    blocks (and only the blocks that need it) are computed again with the row maximum
    subtracted, and every row equals the float64 softmax."""
    torch.manual_seed(0)
    q, k, v = _heads(1, 96, 2, 16)
    q = q * 15.0
    assert (q @ k.transpose(-2, -1)).max() * attention_module.LOG2E > 128  # exp2 overflows
    calls = []

    def push_down(scores: torch.Tensor, head: int, rows: slice) -> None:
        calls.append((head, rows.start))
        if head == 1 and rows.start == 0:
            scores.sub_(1000.0)  # every term of these rows below 2^-900

    with torch.inference_mode():
        out = attention_module.explicit_attention(q * attention_module.LOG2E, k, v, 32,
                                                  push_down)
    bias = torch.zeros(1, 2, 96, 96, dtype=torch.float64)
    bias[0, 1, :32] = -1000.0 / attention_module.LOG2E
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=1.0,
                                              attn_mask=bias)
    assert torch.isfinite(out).all()
    # (Scores of ~100 carry float32 rounding of ~1e-5 into the exponent.)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    assert calls.count((1, 0)) == 2  # computed again with the shift
    assert len(calls) > 6  # (the other blocks overflow here too)
