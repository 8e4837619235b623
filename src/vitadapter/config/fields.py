"""``FieldReader``: consumes a config mapping field by field, so that every field left unread
is reported instead of silently ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError


class FieldReader:
    """Consumes a config dict field by field and reports whatever was left unread."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
        self._data = dict(data)
        self._where = where

    def path(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def take(self, key: str, default: Any = None) -> Any:
        return self._data.pop(key, default)

    def require(self, key: str) -> Any:
        if key not in self._data:
            raise ConfigError(f"missing field '{self.path(key)}'")
        return self._data.pop(key)

    def expect(self, key: str, *allowed: Any) -> None:
        """Accept a field only with one of the values this implementation reproduces."""
        if key in self._data:
            value = self._data.pop(key)
            if value not in allowed:
                raise ConfigError(
                    f"unsupported value {value!r} for '{self.path(key)}' "
                    f"(supported: {', '.join(repr(a) for a in allowed)})"
                )

    def ignore(self, *keys: str) -> None:
        """Fields that only matter for training (drop path, checkpointing, losses, ...)."""
        for key in keys:
            self._data.pop(key, None)

    def sub(self, key: str, required: bool = True) -> FieldReader:
        value = self.require(key) if required else self.take(key, {})
        return FieldReader(value or {}, self.path(key))

    def done(self) -> None:
        if self._data:
            names = ", ".join(f"'{self.path(k)}'" for k in sorted(self._data))
            raise ConfigError(f"unknown or unsupported field(s) {names}")
