"""The device's local data: a CSV file with named feature and label columns.

Read once at start-up and kept on the device; only model deltas leave it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from protocol.errors import ConfigError


class DataError(ConfigError):
    """The local data file is missing, unreadable or lacks the configured columns."""


@dataclass(frozen=True)
class LocalData:
    X: NDArray[np.float64]
    y: NDArray[np.float64]
    features: tuple[str, ...]
    label: str

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])


def load_csv(path: str | Path, features: tuple[str, ...], label: str, *,
             delimiter: str = ",") -> LocalData:
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(_text_lines(fh, p), delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"data file {p} is empty")
            header = [h.strip() for h in header]
            missing = [c for c in (*features, label) if c not in header]
            if missing:
                raise DataError(f"data file {p} lacks column(s) {', '.join(missing)}; "
                                f"it has {', '.join(header)}")
            idx = [header.index(c) for c in (*features, label)]
            rows = []
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                try:
                    rows.append([float(row[i]) for i in idx])
                except (ValueError, IndexError) as exc:
                    raise DataError(
                        f"{p}:{line_no}: not a number in a used column ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {p} is not a UTF-8 text file ({exc.reason}); is it a "
                        "CSV?") from exc
    except csv.Error as exc:
        raise DataError(f"data file {p} is not a readable CSV: {exc}") from exc
    except FileNotFoundError as exc:
        raise DataError(f"data file {p} not found") from exc
    except OSError as exc:
        raise DataError(f"cannot read data file {p}: {exc.strerror}") from exc
    if not rows:
        raise DataError(f"data file {p} has a header but no rows")
    table = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(table)):
        raise DataError(f"data file {p} contains NaN or infinite values in used columns")
    return LocalData(X=table[:, :-1], y=table[:, -1], features=tuple(features), label=label)


def _text_lines(fh: Iterable[str], path: Path) -> Iterator[str]:
    # A NUL byte never occurs in a text CSV; it means a binary file or a torn write.
    for line_no, line in enumerate(fh, start=1):
        if "\0" in line:
            raise DataError(f"data file {path}:{line_no} holds a NUL byte: not a text CSV file")
        yield line
