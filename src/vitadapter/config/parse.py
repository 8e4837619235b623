"""Reading configurations: our JSON layout (``ModelConfig.to_dict()``), official mmcv layouts
(delegated to :mod:`.mmcv`) and config files, with every unread field reported."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .dinov3 import config_from_meta, is_meta_layout
from .fields import FieldReader
from .mmcv import config_from_official
from .schema import (
    HEAD_KINDS,
    AuxiliaryHeadConfig,
    BackboneConfig,
    HeadConfig,
    InferenceConfig,
    ModelConfig,
    PixelDecoderConfig,
    TransformerDecoderConfig,
    UperNetConfig,
)


def config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """Build a :class:`ModelConfig` from our own layout (``ModelConfig.to_dict()``), an official
    mmcv layout or Meta's DINOv3 constructor arguments."""
    if "model" in data or "config" in data or "type" in data.get("backbone", {}):
        return config_from_official(data)
    if is_meta_layout(data):
        return config_from_meta(data)
    f = FieldReader(data, "")
    # A training work dir's config.json also names the classes; the checkpoint carries them too.
    f.ignore("classes", "palette")
    kwargs: dict[str, Any] = {}
    for key in ("name", "behaviour", "dataset", "weights_url", "weights_sha256",
                "backbone_weights_url", "weights_access", "description"):
        if key in data:
            kwargs[key] = f.take(key)
    nested = {"backbone": BackboneConfig, "inference": InferenceConfig}
    for key, cls in nested.items():
        if key in data:
            kwargs[key] = _dataclass_from(cls, f.sub(key))
    if "head" in data:
        kwargs["head"] = _head_from(f.sub("head"))
    f.done()
    return ModelConfig(**kwargs)


def _head_from(f: FieldReader) -> HeadConfig | UperNetConfig:
    """The head, by its ``kind`` (files written before UperNet have none: Mask2Former)."""
    kind = f.take("kind", "mask2former")
    if kind == "upernet":
        aux = f.take("auxiliary", dataclasses.MISSING)
        extra = {}
        if aux is None or aux is dataclasses.MISSING:
            extra["auxiliary"] = None if aux is None else AuxiliaryHeadConfig()
        else:
            extra["auxiliary"] = _dataclass_from(AuxiliaryHeadConfig,
                                                 FieldReader(aux, f.path("auxiliary")))
        return _dataclass_from(UperNetConfig, f, **extra)
    if kind != "mask2former":
        raise ConfigError(f"unknown head kind {kind!r} at '{f.path('kind')}' "
                          f"(supported: {', '.join(HEAD_KINDS)})")
    pixel = _dataclass_from(PixelDecoderConfig, f.sub("pixel_decoder", required=False))
    decoder = _dataclass_from(TransformerDecoderConfig, f.sub("decoder", required=False))
    return _dataclass_from(HeadConfig, f, pixel_decoder=pixel,
                           decoder=decoder)


def _dataclass_from(cls: type, f: FieldReader, **extra: Any) -> Any:
    kwargs = dict(extra)
    for fld in dataclasses.fields(cls):
        if fld.name in extra:
            continue
        value = f.take(fld.name, dataclasses.MISSING)
        if value is dataclasses.MISSING:
            continue
        kwargs[fld.name] = _tupled(value)
    f.done()
    return cls(**kwargs)


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def load_config_file(path: str | Path) -> ModelConfig:
    """Read a JSON config in our layout or the official layout."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except RecursionError:
        raise ConfigError(f"{path}: the JSON is nested too deeply to be a config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if path.suffix == ".py":
            raise ConfigError(
                f"{path} is a Python config: only JSON configs are read (Python is never "
                "executed). Convert it once where mmcv is installed: python -c \"from mmcv "
                f"import Config; Config.fromfile('{path}').dump('{path.with_suffix('.json')}')"
                "\" and pass the .json file") from None
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg if cfg.name != "custom" else cfg.replace(name=path.stem)
