"""Reading TOML config files into validated settings, with one-line errors."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

from protocol.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    import tomli as tomllib

T = TypeVar("T")


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc


def section(doc: dict[str, Any], name: str, *, required: bool = False) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        if required:
            raise ConfigError(f"config lacks the [{name}] section")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def reject_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"unknown option(s) in [{where}]: {', '.join(sorted(unknown))}")


def from_table(cls: type[T], table: dict[str, Any], where: str) -> T:
    """Build a settings dataclass from a TOML table; unknown or mistyped keys are errors."""
    reject_unknown(table, {f.name for f in dataclasses.fields(cls)}, where)  # type: ignore[arg-type]
    try:
        return cls(**table)
    except TypeError as exc:
        raise ConfigError(f"bad [{where}] section: {exc}") from exc


def resolve(base: Path, value: str | None) -> str | None:
    """Paths in a config file are relative to that file, not to the working directory."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else (base / p))
