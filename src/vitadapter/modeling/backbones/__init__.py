"""Backbones: the ViT variants the adapter is built around."""
