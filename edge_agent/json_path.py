"""Paths into a JSON reading (``$.a.b[0].c``) and what counts as a number: pure, no I/O.

The syntax is deliberately tiny: ``$`` then any number of ``.name`` (letters, digits,
``_`` and ``-``) or ``[index]`` (a non-negative integer) steps. No wildcards, filters or
expressions: a path names exactly one value, and a config can never run code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d{1,6})\]")
MAX_STEPS = 16
_DECIMAL = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


class PathError(ValueError):
    """A path that does not follow the syntax (a config error)."""


class ReadingError(ValueError):
    """A reading without a usable value at a path; ``reason`` is a short counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class JsonPath:
    """A parsed path: ``steps`` are str (object key) or int (array index)."""

    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        if not text.startswith("$"):
            raise PathError(f"path {text!r} must start with '$' (e.g. \"$.temperature\")")
        steps: list[str | int] = []
        pos = 1
        while pos < len(text):
            m = _STEP.match(text, pos)
            if m is None:
                raise PathError(f"path {text!r}: cannot read {text[pos:]!r}; use .name and "
                                "[index] steps only, e.g. \"$.sensors[0].value\"")
            steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
            pos = m.end()
        if len(steps) > MAX_STEPS:
            raise PathError(f"path {text!r} has more than {MAX_STEPS} steps")
        return cls(text, tuple(steps))

    def get(self, doc: Any) -> Any:
        """The value at this path; ReadingError("missing-field") if there is none."""
        value = doc
        for step in self.steps:
            if isinstance(step, str):
                if not (isinstance(value, dict) and step in value):
                    raise ReadingError("missing-field", f"no value at {self.text}")
            elif not (isinstance(value, list) and step < len(value)):
                raise ReadingError("missing-field", f"no value at {self.text}")
            value = value[step]
        return value

    def number(self, doc: Any) -> float:
        """The value at this path as a finite float (see ``as_number``)."""
        return as_number(self.get(doc), self.text)


def as_number(value: Any, where: str = "value") -> float:
    """A reading's value as a float: numbers as they are, true/false as 1/0, and strings
    holding a decimal number ("21.5", as some firmwares send). Anything else (null,
    text, objects, NaN, infinities) is a ReadingError("not-a-number")."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) or (isinstance(value, str) and _DECIMAL.fullmatch(value)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range (JSON allows 1e400 digits)
            raise ReadingError("not-a-number", f"{where} is too large") from None
    else:
        raise ReadingError("not-a-number", f"{where} is {type(value).__name__}, not a number")
    if not math.isfinite(number):
        raise ReadingError("not-a-number", f"{where} is not finite")
    return number
