"""Weights: reading and strictly loading checkpoints, safetensors, the release-weight cache."""
