"""The network: backbone + adapter, decode head, the whole segmentation model and its builder."""
