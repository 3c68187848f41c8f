"""Reading TOML config files into validated settings, with one-line errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    import tomli as tomllib


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


def resolve(base: Path, value: str | None) -> str | None:
    """Paths in a config file are relative to that file, not to the working directory."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else (base / p))
