"""Numerical kernels in pure PyTorch."""

from .dispatch import fast_inference, reference_path, use_reference
from .ms_deform_attn import ms_deform_attn, ms_deform_attn_fast, ms_deform_attn_reference

__all__ = ["fast_inference", "ms_deform_attn", "ms_deform_attn_fast", "ms_deform_attn_reference",
           "reference_path", "use_reference"]
