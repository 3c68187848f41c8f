"""The device's local data: a CSV file with named feature and label columns.

Read at start-up and again whenever the file changed (a device's logger keeps
appending); it stays on the device, only encrypted sums leave it. A share of
the rows can be held out from training, to evaluate the fleet model on.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from numpy.typing import NDArray

from fedmq.protocol.errors import ConfigError


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
        with open_csv(p) as fh:
            reader = csv.reader(text_lines(fh, f"data file {p}"), delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"data file {p} is empty")
            header = [h.strip() for h in header]
            missing = [c for c in (*features, label) if c not in header]
            if missing:
                raise DataError(f"data file {p} lacks column(s) {', '.join(missing)}"
                                + _unused(header, (*features, label)))
            idx = [header.index(c) for c in (*features, label)]
            rows, lines = [], []
            for line_no, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                rows.append(_numbers(row, idx, header, f"{p}:{line_no}"))
                lines.append(line_no)
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
        r, c = (int(i) for i in np.argwhere(~np.isfinite(table))[0])
        count = int(np.count_nonzero(~np.isfinite(table)))
        raise DataError(f"{p}:{lines[r]}: column {(*features, label)[c]!r} is {table[r, c]} "
                        f"({count} NaN or infinite value(s) in the used columns)")
    return LocalData(X=table[:, :-1], y=table[:, -1], features=tuple(features), label=label)


def column_diff(wanted: Sequence[str], found: Sequence[str]) -> str:
    """What ``found`` lacks and has beyond ``wanted``: "missing: f23; extra: foo" (or "same
    columns in another order"), never the two whole lists."""
    missing = [c for c in wanted if c not in found]
    extra = [c for c in found if c not in wanted]
    said = [f"{what}: {', '.join(names)}" for what, names in (("missing", missing),
                                                              ("extra", extra)) if names]
    return "; ".join(said) or "the same columns in another order"


def _unused(header: Sequence[str], used: Sequence[str]) -> str:
    """The header's columns no feature or label names (a misspelt one is among them)."""
    other = [c for c in header if c not in used]
    return f"; the header's other column(s): {', '.join(other)}" if other else ""


def _numbers(row: Sequence[str], idx: Sequence[int], header: Sequence[str],
             where: str) -> list[float]:
    """The used cells of one row as floats; DataError naming the row and the column."""
    values = []
    for i in idx:
        if i >= len(row):
            raise DataError(f"{where}: column {header[i]!r} is missing (the row has "
                            f"{len(row)} field(s), the header {len(header)})")
        try:
            values.append(float(row[i]))
        except ValueError as exc:
            # The parser's words (quoting the cell) in parentheses: public_detail drops them.
            raise DataError(f"{where}: column {header[i]!r} is not a number ({exc})") from None
    return values


MAX_LINE = 1 << 20  # characters: a CSV row of readings is far shorter; a file without
# newlines (a binary file, /dev/zero) would otherwise be read whole into memory


def open_csv(path: Path) -> TextIO:
    """A CSV as text; "utf-8-sig" so a byte-order mark (Excel's "CSV UTF-8") is not taken
    for part of the first column's name."""
    return path.open(newline="", encoding="utf-8-sig")


def text_lines(fh: TextIO, what: str) -> Iterator[str]:
    """The lines of ``fh``, each read with a bound, checked to be text."""
    line_no = 0
    while line := fh.readline(MAX_LINE + 1):
        line_no += 1
        if len(line) > MAX_LINE:
            raise DataError(f"{what}:{line_no} is longer than {MAX_LINE:,} characters: not a "
                            "CSV file of readings")
        # A NUL byte never occurs in a text CSV; it means a binary file or a torn write.
        if "\0" in line:
            raise DataError(f"{what}:{line_no} holds a NUL byte: not a text CSV file")
        yield line


def split_holdout(data: LocalData, share: float, seed: str) -> tuple[LocalData, LocalData]:
    """(training rows, evaluation rows): ``round(share * n)`` rows (at least one) held out.

    Which rows is decided by a hash of ``seed`` (the agent id) and each row's values,
    not by position: rows read again unchanged keep their side. Rows a logger appends
    take their place by hash, so a new row with a smaller hash moves one held-out row
    into training (a few per reload, not a reshuffle; exact stability would need a
    per-row threshold and a held-out count that varies). With ``share == 0`` nothing is
    held out and the evaluation rows are all rows.
    """
    if not 0 <= share <= 0.5:
        raise DataError(f"[data] holdout must lie in [0, 0.5], got {share!r}")
    if share == 0:
        return data, data
    n = data.n_samples
    n_held = max(1, round(share * n))
    if n - n_held < 1:
        raise DataError(f"[data] holdout = {share:g} of {n} row(s) leaves no training rows; "
                        "the data file needs at least 2 rows, or set holdout = 0")
    prefix = hashlib.blake2b(seed.encode(), digest_size=16).digest()
    rows = np.column_stack([data.X, data.y])
    keys = [hashlib.blake2b(prefix + row.tobytes(), digest_size=8).digest() for row in rows]
    order = sorted(range(n), key=keys.__getitem__)  # stable: equal rows keep file order
    held = np.zeros(n, dtype=bool)
    held[order[:n_held]] = True
    return _rows(data, ~held), _rows(data, held)


def _rows(data: LocalData, mask: NDArray[np.bool_]) -> LocalData:
    return LocalData(X=data.X[mask], y=data.y[mask], features=data.features, label=data.label)


class DataFile:
    """The CSV on disk, read again before a round when it changed since the last read.

    A read that fails raises DataError and leaves the last good rows in place, so
    the next round tries again: the agent recovers once the file is fixed.
    """

    def __init__(self, path: str | Path, features: tuple[str, ...], label: str, *,
                 delimiter: str = ",", holdout: float = 0.0, seed: str = "") -> None:
        self.path = Path(path)
        self.features, self.label, self.delimiter = features, label, delimiter
        self.holdout, self.seed = holdout, seed
        self._stamp: tuple[int, int, int] | None = None
        self._read()

    def _read(self) -> None:
        stamp = self._current_stamp()
        data = load_csv(self.path, self.features, self.label, delimiter=self.delimiter)
        try:
            train, evaluation = split_holdout(data, self.holdout, self.seed)
        except DataError as exc:
            raise DataError(f"data file {self.path}: {exc}") from exc
        # Only a file that split cleanly replaces the last good rows.
        self.data, self.train, self.evaluation = data, train, evaluation
        self._stamp = stamp

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # load_csv names the problem
        # The inode catches a file replaced atomically (write to a temp file, rename).
        return st.st_mtime_ns, st.st_size, st.st_ino

    def refresh(self) -> bool:
        """Read the file again if it changed; True if it did. Raises DataError."""
        stamp = self._current_stamp()
        if stamp is not None and stamp == self._stamp:
            return False
        self._read()
        return True


class GivenRows:
    """Rows handed to the agent in memory (a simulation, a test): they never change."""

    def __init__(self, data: LocalData, *, holdout: float = 0.0, seed: str = "") -> None:
        self.path: Path | None = None
        self.data = data
        self.train, self.evaluation = split_holdout(data, holdout, seed)

    def refresh(self) -> bool:
        return False
