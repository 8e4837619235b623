"""Decode heads: Mask2Former (pixel decoder + masked-attention transformer decoder)."""
