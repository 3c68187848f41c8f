"""What a fleet learns, read from a sample of the devices' data: features, label and model.

``fedmq init gateway DIR --data-sample FILE.csv --label COLUMN`` reads the CSV's header
and rows once on the gateway and writes the same feature list into the aggregator's
``[model]`` and every device's ``[data]``, so no one copies column names by hand. The
sample stays on the gateway's disk: only its column names and the label's range are used.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from fedmq.protocol.errors import ConfigError

MAX_ROWS = 200_000  # enough to see every class of a sample file; bounds the time it takes
MAX_CLASSES = 50  # integer labels with more distinct values than this are a regression target
SHOWN = 12  # column names shown in a line
RISING_ROWS = 10  # a column that rises on every one of at least this many rows: a counter
# Names that usually mean a row's time or identity rather than a reading.
NOT_A_READING = re.compile(r"(?i)^(id|index|row|n|no|time|timestamp|date|datetime|ts|epoch|"
                           r"unnamed: ?0)$|(_id|_time|_ts|_timestamp|_date)$")


@dataclass(frozen=True)
class FleetColumns:
    features: tuple[str, ...]
    label: str
    kind: str  # "logistic" or "linear"
    n_classes: int  # 0 for "linear"
    delimiter: str = ","
    left_out: tuple[str, ...] = ()  # why each non-numeric column is not a feature

    def toml(self) -> dict[str, str]:
        """The template values: TOML literals (JSON strings are valid TOML basic strings)."""
        return {"features": json.dumps(list(self.features)), "label": json.dumps(self.label),
                "delimiter": json.dumps(self.delimiter), "kind": json.dumps(self.kind),
                "n_classes": str(self.n_classes)}

    def describe(self) -> list[str]:
        model = (f"logistic regression over {self.n_classes} classes (0..{self.n_classes - 1}; "
                 "more than the sample shows: --n-classes)" if self.kind == "logistic"
                 else "linear regression")
        return [f"model: {model} of {self.label!r} from {len(self.features)} features "
                f"({_names(self.features)})", *self.left_out]


DEFAULT = FleetColumns(  # what `fedmq sample-data` writes: the synthetic motor fleet
    features=("vibration_rms", "temperature_c", "current_a", "rpm"), label="fault",
    kind="logistic", n_classes=2)


def _names(names: tuple[str, ...] | list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _rows(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    where = f"--data-sample {path}"
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((reader.line_num, row))
                    if len(rows) >= MAX_ROWS:
                        break
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not a UTF-8 text file ({exc.reason}); is it a CSV?") \
            from None
    except (csv.Error, ValueError) as exc:  # ValueError: a NUL byte in the file
        raise ConfigError(f"{where}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    if not header or header == [""]:
        raise ConfigError(f"{where}: empty file; it needs a header line of column names")
    if "" in header:
        raise ConfigError(f"{where}: column {header.index('') + 1} of the header has no name")
    if len(set(header)) != len(header):
        twice = sorted({h for h in header if header.count(h) > 1})
        raise ConfigError(f"{where}: the header names {', '.join(twice)} twice")
    if not rows:
        raise ConfigError(f"{where}: a header but no rows; the sample needs a few rows")
    return header, rows


def read_columns(path: Path, label: str, *, delimiter: str = ",", exclude: tuple[str, ...] = (),
                 kind: str | None = None, n_classes: int | None = None) -> FleetColumns:
    """The fleet's columns from a sample CSV: every numeric column but the label and
    ``exclude`` is a feature; the model kind follows the label unless ``kind`` is given,
    and a classifier has as many classes as the sample shows unless ``n_classes`` is."""
    header, rows = _rows(path, delimiter)
    where = f"--data-sample {path}"
    hint = ""
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        hint = " (is it separated by another character? give --delimiter)"
    if label not in header:
        raise ConfigError(f"{where} has no column {label!r} (--label); its columns: "
                          f"{_names(header)}{hint}")
    unknown = [c for c in exclude if c not in header]
    if unknown:
        raise ConfigError(f"--exclude {','.join(unknown)}: not a column of {path}")
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
    features, left_out = [], []
    for i, name in enumerate(header):
        if name == label or name in exclude:
            continue
        bad = next(((line, row[i] if i < len(row) else "") for line, row in rows
                    if i >= len(row) or _number(row[i]) is None), None)
        if bad is None:
            features.append(name)
            values = [float(row[i]) for _, row in rows]
            rising = len(values) >= RISING_ROWS and all(
                b > a for a, b in itertools.pairwise(values))
            if NOT_A_READING.search(name) or rising:
                why = "its name" if NOT_A_READING.search(name) else "it rises on every row"
                left_out.append(f"note: {name!r} looks like a time or a row id ({why}): "
                                f"--exclude {name} unless the model should learn from it")
        else:
            left_out.append(f"not a feature: {name!r} ({path}:{bad[0]} holds {bad[1]!r}, not a "
                            "number)")
    if not features:
        raise ConfigError(f"{where}: no numeric column besides the label {label!r} to learn "
                          "from")
    if n_classes is not None and kind is None:
        kind = "logistic"
    model_kind, classes = _model(labels, kind, label)
    if n_classes is not None:
        if model_kind != "logistic" or n_classes < classes:
            raise ConfigError(f"--n-classes {n_classes}: the sample's label {label!r} holds "
                              f"class {classes - 1}; a classifier needs at least {classes}")
        classes = n_classes
    return FleetColumns(tuple(features), label, model_kind, classes, delimiter,
                        tuple(left_out))


def _model(labels: list[float], kind: str | None, label: str) -> tuple[str, int]:
    classes = all(v.is_integer() and v >= 0 for v in labels)
    if kind is None:
        kind = "logistic" if classes and len(set(labels)) <= MAX_CLASSES \
            and max(labels) < MAX_CLASSES else "linear"
    if kind == "linear":
        return "linear", 0
    if kind != "logistic":
        raise ConfigError(f"--kind {kind}: must be logistic or linear")
    if not classes:
        raise ConfigError(f"--kind logistic: label {label!r} must hold class numbers 0, 1, ...; "
                          "the sample has other values")
    return "logistic", max(2, int(max(labels)) + 1)
