"""Exceptions raised for bad input: each message says what was wrong and what to do."""


class VitAdapterError(Exception):
    """Base class of the errors this package raises for bad input or unusable files."""


class ConfigError(VitAdapterError, ValueError):
    """A configuration that cannot describe a model this package builds."""


class CheckpointError(VitAdapterError):
    """A checkpoint that cannot be read or does not fit the model."""


class ImageError(VitAdapterError, ValueError):
    """An input that is not a readable image."""


class DatasetError(VitAdapterError, ValueError):
    """An evaluation dataset that is not where or what it should be (layout, files, labels)."""


class EvaluationError(VitAdapterError):
    """An evaluation that cannot run as asked (e.g. a saved state from another run)."""


class MissingDependencyError(VitAdapterError, ImportError):
    """An optional dependency (an extra such as ``vitadapter[onnx]``) is not installed."""


class ExportError(VitAdapterError):
    """A model that cannot be exported as asked (no weights, unsupported opset or dtype, ...)."""


class OnnxModelError(VitAdapterError, ValueError):
    """An ONNX file that is unreadable or was not exported by ``vitadapter export-onnx``."""


class TrainingError(VitAdapterError):
    """A training run that cannot start or continue as asked (work dir, resume, settings)."""


class InferenceError(VitAdapterError):
    """A model whose outputs cannot be used (e.g. non-finite scores from NaN weights)."""
