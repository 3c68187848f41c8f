"""What a fleet learns, read from a sample of the devices' data: features, label and model.

``fedmq init gateway DIR --data-sample FILE.csv --label COLUMN`` reads the CSV's header
and rows once on the gateway and writes the same feature list into the aggregator's
``[model]`` and every device's ``[data]``, so no one copies column names by hand. The
sample stays on the gateway's disk: only its column names and the label's range are used.
It is read as the devices read their files (``edge_agent.data``): what init accepts, the
agent reads.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmq.edge_agent.data import open_csv, text_lines
from fedmq.protocol.errors import ConfigError

MAX_ROWS = 200_000  # enough to see every class of a sample file; bounds the time it takes
AUTO_CLASSES = 50  # integer labels with more distinct values than this are a regression target
MAX_CLASSES = 1000  # a classifier's parameters and every update grow with the class count
SHOWN = 12  # column names shown in a line
RISING_ROWS = 10  # a column that rises on every one of at least this many rows: a counter
# Names that usually mean a row's time or identity rather than a reading.
NOT_A_READING = re.compile(r"(?i)^(id|index|row|n|no|time|timestamp|date|datetime|ts|epoch|"
                           r"unnamed: ?0)$|(_id|_time|_ts|_timestamp|_date)$")
DELIMITERS = {"\\t": "\t", "tab": "\t", "TAB": "\t"}  # as typed on a command line


@dataclass(frozen=True)
class FleetColumns:
    features: tuple[str, ...]
    label: str
    kind: str  # "logistic" or "linear"
    n_classes: int  # 0 for "linear"
    delimiter: str = ","
    notes: tuple[str, ...] = ()  # what was left out or looks wrong, one line each
    why: str = ""  # why this model kind

    def toml(self) -> dict[str, str]:
        """The aggregator template's values (the devices' ``data_toml`` and the model)."""
        return {**data_toml(self.features, self.label, self.delimiter),
                "kind": json.dumps(self.kind), "n_classes": str(self.n_classes)}

    def describe(self) -> list[str]:
        model = (f"logistic regression over {self.n_classes} classes (0..{self.n_classes - 1})"
                 if self.kind == "logistic" else "linear regression")
        why = f"; {self.why}" if self.why else ""
        return [f"model: {model} of {self.label!r} from {len(self.features)} features "
                f"({names(self.features)}){why}", *self.notes]


def data_toml(features: Sequence[str], label: str, delimiter: str) -> dict[str, str]:
    """A device's ``[data]`` columns as template values: TOML literals (JSON strings are
    valid TOML basic strings)."""
    return {"features": json.dumps(list(features)), "label": json.dumps(label),
            "delimiter": json.dumps(delimiter)}


DEFAULT = FleetColumns(  # what `fedmq sample-data` writes: the synthetic motor fleet
    features=("vibration_rms", "temperature_c", "current_a", "rpm"), label="fault",
    kind="logistic", n_classes=2)


def names(columns: Sequence[str]) -> str:
    """Column names as Python literals: a comma or a newline inside one stays visible."""
    more = f", ... ({len(columns)} in all)" if len(columns) > SHOWN else ""
    return ", ".join(repr(c) for c in columns[:SHOWN]) + more


def delimiter_of(value: str) -> str:
    """``--delimiter``: one character; ``\\t`` or ``tab`` for a tab."""
    value = DELIMITERS.get(value, value)
    if len(value) != 1 or value in "\r\n\"":
        raise ConfigError(f"--delimiter {value!r}: one character, such as , or ; or \\t (tab)")
    return value


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _rows(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    where = f"--data-sample {path}"
    try:
        with open_csv(path) as fh:
            reader = csv.reader(text_lines(fh, where), delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((reader.line_num, row))
                    if len(rows) >= MAX_ROWS:
                        break
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not a UTF-8 text file ({exc.reason}); is it a CSV?") \
            from None
    except csv.Error as exc:
        raise ConfigError(f"{where}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    if not header or header == [""]:
        raise ConfigError(f"{where}: empty file; it needs a header line of column names")
    if "" in header:
        raise ConfigError(f"{where}: column {header.index('') + 1} of the header has no name")
    if len(set(header)) != len(header):
        twice = sorted({h for h in header if header.count(h) > 1})
        raise ConfigError(f"{where}: the header names {names(twice)} twice")
    if not rows:
        raise ConfigError(f"{where}: a header but no rows; the sample needs a few rows")
    return header, rows


def _excluded(values: Sequence[str], header: list[str], path: Path) -> set[str]:
    """``--exclude`` values: each a column name, or names separated by commas."""
    out: set[str] = set()
    for value in values:
        parts = [value] if value in header else [p.strip() for p in value.split(",") if p.strip()]
        unknown = [p for p in parts if p not in header]
        if unknown:
            raise ConfigError(f"--exclude {', '.join(unknown)}: not a column of {path}")
        out.update(parts)
    return out


def read_columns(path: Path, label: str, *, delimiter: str = ",",
                 exclude: Sequence[str] = (), kind: str | None = None,
                 n_classes: int | None = None) -> FleetColumns:
    """The fleet's columns from a sample CSV: every numeric column but the label and
    ``exclude`` is a feature; the model kind follows the label unless ``kind`` is given,
    and a classifier has as many classes as the sample shows unless ``n_classes`` is."""
    delimiter = delimiter_of(delimiter)
    header, rows = _rows(path, delimiter)
    where = f"--data-sample {path}"
    hint = ""
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|,"):
        hint = " (is it separated by another character? give --delimiter)"
    if label not in header:
        raise ConfigError(f"{where} has no column {label!r} (--label); its columns: "
                          f"{names(header)}{hint}")
    skip = _excluded(exclude, header, path)
    col = header.index(label)
    labels = []
    for line, row in rows:
        value = _number(row[col]) if col < len(row) else None
        if value is None:
            cell = row[col] if col < len(row) else ""
            raise ConfigError(f"{path}:{line}: label {label!r} is {cell!r}, not a number; "
                              "labels must be numbers (class numbers 0, 1, ... for a "
                              "classifier)")
        labels.append(value)
    features: list[str] = []
    notes: list[str] = []
    for i, name in enumerate(header):
        if name != label and name not in skip:
            _judge(name, [row[i] if i < len(row) else "" for _, row in rows],
                   [line for line, _ in rows], labels, path, features, notes)
    if not features:
        raise ConfigError(f"{where}: no numeric column besides the label {label!r} to learn "
                          f"from ({'; '.join(notes[:3]) or 'every other column is excluded'})")
    if n_classes is not None and kind is None and all(v.is_integer() and v >= 0 for v in labels):
        kind = "logistic"  # a class count given: a classifier, however many values there are
    model_kind, classes, why = _model(labels, kind, label)
    if n_classes is not None:
        if model_kind != "logistic":
            raise ConfigError(f"--n-classes goes with a classifier, and {label!r} is a "
                              f"regression target here ({why.split(';')[0]})")
        if not classes <= n_classes <= MAX_CLASSES:
            raise ConfigError(f"--n-classes {n_classes}: a classifier of {label!r} needs "
                              f"{classes} to {MAX_CLASSES} classes (the sample holds class "
                              f"{classes - 1})")
        classes, why = n_classes, "--n-classes"
    return FleetColumns(tuple(features), label, model_kind, classes, delimiter, tuple(notes),
                        why)


def _judge(name: str, cells: list[str], lines: list[int], labels: list[float], path: Path,
           features: list[str], notes: list[str]) -> None:
    """Add ``name`` to ``features`` if the device can read it, with a note if it looks like
    a time, a row id or the label in another form; else say why it is left out."""
    values = [_number(cell) for cell in cells]
    bad = next((i for i, v in enumerate(values) if v is None), None)
    if bad is not None:
        what = "an empty cell" if not cells[bad].strip() else f"{cells[bad]!r}, not a number"
        notes.append(f"not a feature: {name!r} ({path}:{lines[bad]} holds {what})")
        return
    features.append(name)
    numbers = [v for v in values if v is not None]
    rising = len(numbers) >= RISING_ROWS and all(b > a for a, b in itertools.pairwise(numbers))
    named = NOT_A_READING.search(name) is not None
    if named or rising:
        why = "its name" if named else "it rises on every row"
        notes.append(f"note: {name!r} looks like a time or a row id ({why}): --exclude "
                     f"{name} unless the model should learn from it")
    elif _determines(numbers, labels):
        notes.append(f"note: {name!r} alone tells the label on every sample row (the label in "
                     f"another form?): --exclude {name} unless devices have it when they "
                     "predict")


def _determines(values: list[float], labels: list[float]) -> bool:
    """A column of few values each of which always comes with the same label."""
    seen: dict[float, float] = {}
    for value, label in zip(values, labels, strict=True):
        if seen.setdefault(value, label) != label:
            return False
    return len(values) >= RISING_ROWS and len(set(labels)) > 1 and len(seen) <= AUTO_CLASSES \
        and len(seen) * 2 <= len(values)


def _model(labels: list[float], kind: str | None, label: str) -> tuple[str, int, str]:
    """(kind, classes, why) for the label's values."""
    classes = all(v.is_integer() and v >= 0 for v in labels)
    distinct = len(set(labels))
    top = int(max(labels)) if classes else 0
    if kind is None:
        if classes and distinct <= AUTO_CLASSES and top < AUTO_CLASSES:
            return "logistic", max(2, top + 1), "classes as the sample shows them; " \
                "--n-classes N if devices have more"
        why = ("its values are not all class numbers 0, 1, ..." if not classes else
               f"{distinct} distinct values up to {top}")
        return "linear", 0, f"{why}; --kind logistic for a classifier"
    if kind == "linear":
        return "linear", 0, "--kind linear"
    if kind != "logistic":
        raise ConfigError(f"--kind {kind}: must be logistic or linear")
    if not classes:
        raise ConfigError(f"--kind logistic: label {label!r} must hold class numbers 0, 1, ...; "
                          "the sample has other values")
    if top + 1 > MAX_CLASSES:
        raise ConfigError(f"--kind logistic: label {label!r} holds class {top}; a fleet "
                          f"classifier has at most {MAX_CLASSES} classes")
    return "logistic", max(2, top + 1), "--kind logistic"
