"""Backends: what turns normalised crops into class scores (PyTorch, onnxruntime), and the
ONNX export."""
