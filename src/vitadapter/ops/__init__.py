"""Numerical kernels in pure PyTorch."""

from .dispatch import fast_inference, reference_path, use_reference
from .ms_deform_attn import ms_deform_attn, ms_deform_attn_fast, ms_deform_attn_reference
from .products import Linear, activated, fresh_activation, linear, matmul_nt, onednn_applies
from .self_attention import attention

__all__ = ["Linear", "activated", "attention", "fast_inference", "fresh_activation", "linear",
           "matmul_nt", "ms_deform_attn", "ms_deform_attn_fast", "ms_deform_attn_reference",
           "onednn_applies", "reference_path", "use_reference"]
