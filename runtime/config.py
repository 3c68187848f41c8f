"""Reading TOML config files through typed schemas, with one-line errors.

tomllib parses; msgspec checks the parsed tables against ``msgspec.Struct``
schemas (strict: a TOML bool is never an int, a string never a number; unknown
keys and tables are errors). Every failure becomes ONE line naming the file,
the table, the key and what was expected, e.g.
``configs/agent.toml: [mqtt] port: expected int, got str ("8883")``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import stat
import sys
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from fedmq.protocol.errors import ConfigError, FedmqError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older Raspberry Pi OS
    import tomli as tomllib

log = logging.getLogger(__name__)

S = TypeVar("S")



class Table(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every schema table: unknown keys are errors, values read-only.

    Subclasses repeat ``frozen=True``: mypy does not see it inherited."""


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (an HTTP endpoint without a login)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def toml_value(value: Any) -> str:
    """A value as it would be written in TOML (strings quoted, true/false lowercase)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list) and len(value) > 8:
        return f"an array of {len(value)}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def where(path: tuple[str | int, ...]) -> str:
    """``("mqtt", "port")`` -> ``[mqtt] port``; ``("model", "scale", 2)`` -> ``[model] scale[2]``.
    """
    if not path:
        return "top level"
    table, rest = f"[{path[0]}]", ""
    for step in path[1:]:
        rest += f"[{step}]" if isinstance(step, int) else (f".{step}" if rest else str(step))
    return f"{table} {rest}" if rest else table


def _lookup(doc: Any, path: tuple[str | int, ...]) -> tuple[bool, Any]:
    for step in path:
        inside = (isinstance(step, int) and isinstance(doc, list) and step < len(doc)) or (
            isinstance(step, str) and isinstance(doc, Mapping) and step in doc)
        if not inside:
            return False, None
        doc = doc[step]
    return True, doc


def _field_type(schema: Any, path: tuple[str | int, ...]) -> Any:
    """The annotated type of the schema field at ``path`` (None when not a struct field)."""
    tp: Any = schema
    for step in path:
        tp = _strip(tp)
        if isinstance(step, int):
            args = typing.get_args(tp)
            tp = args[0] if args else None
            continue
        if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
            return None
        found = [f for f in msgspec.structs.fields(tp) if f.name == step]
        if not found:
            return None
        tp = found[0].type
    return tp


def _strip(tp: Any) -> Any:
    """Drop ``Annotated`` and ``| None`` around a type."""
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and len(args) == 1:
            tp = args[0]
            continue
        return tp


def _description(tp: Any) -> str | None:
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(meta, msgspec.Meta) and meta.description:
                return meta.description
    args = typing.get_args(tp)
    if type(None) in args:
        return next((d for a in args if (d := _description(a))), None)
    return None


def _keys(schema: Any, path: tuple[str | int, ...]) -> list[str]:
    tp = _strip(_field_type(schema, path)) if path else schema
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [f.name for f in msgspec.structs.fields(tp)]
    return []


Labels = Mapping[tuple[str, str], tuple[str, str]]


def _label(doc: Any, path: tuple[str | int, ...], labels: Labels) -> str:
    """`` (feature "rpm")`` for ``[model] scale[3]`` when labels maps scale to features."""
    if len(path) < 3 or not isinstance(path[2], int):
        return ""
    names_at = labels.get((str(path[0]), str(path[1])))
    if names_at is None:
        return ""
    found, names = _lookup(doc, names_at)
    if not (found and isinstance(names, list) and path[2] < len(names)):
        return ""
    noun = names_at[1].removesuffix("s")  # "features" -> "feature"
    return f" ({noun} {toml_value(names[path[2]])})"


def _explain(exc: msgspec.ValidationError, doc: Any, schema: Any, source: str,
             labels: Labels) -> str:
    match = _AT.match(str(exc))
    msg, raw = (match["msg"], match["path"] or "") if match else (str(exc), "")
    path: tuple[str | int, ...] = tuple(
        m[1] if m[1] is not None else int(m[2]) for m in _STEP.finditer(raw))
    place = where(path) + _label(doc, path, labels)
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", msg):
        known = ", ".join(_keys(schema, path))
        what = f"unknown table [{m[1]}]" if not path else f"{where(path)}: unknown key {m[1]!r}"
        return f"{source}: {what} (known: {known})"
    if m := re.fullmatch(r"Object missing required field `(.*)`", msg):
        return f"{source}: {where((*path, m[1]))} is required"
    found, value = _lookup(doc, path)
    got = f", got {toml_value(value)}" if found else ""
    tp = _field_type(schema, path)
    literal = _strip(tp)
    if typing.get_origin(literal) is typing.Literal:
        choices = " or ".join(toml_value(c) for c in typing.get_args(literal))
        return f"{source}: {place}: expected {choices}{got}"
    if (m := re.fullmatch(r"Expected `([^`]*)`, got `([^`]*)`", msg)) and found:
        expected, actual = (t.replace(" | null", "").replace("object", "table") for t in m.groups())
        return f"{source}: {place}: expected {expected}, got {actual} ({toml_value(value)})"
    described = _description(tp) if "matching regex" in msg or "length" in msg else None
    text = (f"expected {described}" if described
            else msg.replace("`", "").replace("object", "table").replace(" | null", ""))
    return f"{source}: {place}: {text[0].lower()}{text[1:]}{got}"


def _non_finite(doc: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """TOML knows ``inf`` and ``nan``; no fedmq setting wants either."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return path
    items: Any = doc.items() if isinstance(doc, Mapping) else (
        enumerate(doc) if isinstance(doc, list) else ())
    for key, value in items:
        if (bad := _non_finite(value, (*path, key))) is not None:
            return bad
    return None


def convert(doc: Mapping[str, Any], schema: type[S], *, source: str,
            labels: Labels | None = None) -> S:
    """Check ``doc`` (parsed TOML) against ``schema``; errors name source, table and key.

    ``labels`` maps an array to the array naming its entries, e.g.
    ``{("model", "scale"): ("model", "features")}``: an error at ``scale[3]`` then
    names the feature too.
    """
    labels = labels or {}
    bad = _non_finite(doc)
    if bad is not None:
        raise ConfigError(f"{source}: {where(bad)}{_label(doc, bad, labels)}: expected a "
                          f"finite number, got {_lookup(doc, bad)[1]}")
    try:
        return msgspec.convert(doc, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, doc, schema, source, labels)) from None


@contextmanager
def blame(source: str, place: str) -> Iterator[None]:
    """Errors raised while building settings from a checked table name their place."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith(f"{source}:"):
            raise
        raise ConfigError(f"{source}: {place}: {exc}") from None
    except (FedmqError, ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {place}: {exc}") from None


def resolve(base: Path, value: str | None) -> str | None:
    """Paths in a config file are relative to that file, not to the working directory."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else (base / p))


def existing_file(base: Path, value: str | None, *, source: str, key: str) -> str | None:
    """``value`` resolved against ``base``; it must name a readable file."""
    path = resolve(base, value)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"{source}: {key}: file {path} does not exist (paths are relative "
                          f"to the config file)")
    return path


def warn_if_exposed(path: str | Path, what: str) -> bool:
    """Log one line when a file holding a secret is readable by group or others."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return False
    if mode & 0o077:
        log.warning("%s holds %s and is readable by group/others (mode %04o): chmod 600 %s",
                    path, what, mode, path)
        return True
    return False
