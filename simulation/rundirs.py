"""Where one ``fedmq simulate`` invocation writes: its own run directory under ``--out``.

::

    runs/                         --out (default)
      <run_id>/                   one invocation: data/, agents/, aggregator/, metrics.csv/.png
        aggregator/               the aggregator's state_dir: its own keys (fresh each run
                                  unless --reuse-key) and runs/<run_id>/ (same id), latest
      latest -> <run_id>          relative symlink to the newest run, replaced atomically

A later invocation never reads or changes an earlier one's files, except the key
files it copies with ``--reuse-key``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fedmq.aggregator.runs import new_run_id, point_latest, read_latest
from fedmq.protocol.errors import ConfigError

KEY_FILES = ("paillier.key", "signing.key")


@dataclass(frozen=True)
class SimulationRun:
    run_id: str
    run_dir: Path
    latest: Path  # the link that names the newest run: what the demo prints

    @property
    def aggregator_dir(self) -> Path:
        return self.run_dir / "aggregator"


def start_run(out: Path, *, reuse_key: bool = False) -> tuple[SimulationRun, str | None]:
    """A new run directory under ``out``, ``out/latest`` pointing at it; with
    ``reuse_key`` the aggregator keys of the run ``latest`` named before are copied
    into it. Returns the run and a note for the user (None if nothing to say)."""
    legacy = _adopt_old_latest(out / "latest")
    previous = read_latest(out / "latest") or legacy
    run_id = new_run_id()
    run = SimulationRun(run_id, out / run_id, out / "latest")
    try:
        run.aggregator_dir.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {run.run_dir}: {exc.strerror}") from exc
    note = None
    if reuse_key:
        note = _copy_keys(previous / "aggregator" if previous else None, run.aggregator_dir)
    point_latest(run.latest, run.run_dir)
    return run, note


def _adopt_old_latest(latest: Path) -> Path | None:
    """Before run directories, ``runs/latest`` was the run itself: keep it as a run of its
    own (named by its time) so the link can take its place."""
    if latest.is_symlink() or not latest.is_dir():
        return None
    old = latest.with_name(new_run_id(latest.stat().st_mtime) + "-old")
    try:
        latest.rename(old)
    except OSError as exc:
        raise ConfigError(f"{latest} is a directory from an older fedmq; cannot move it aside "
                          f"to {old}: {exc.strerror}") from exc
    return old


def _copy_keys(source: Path | None, dest: Path) -> str:
    if source is None or not all((source / k).exists() for k in KEY_FILES):
        return "--reuse-key: no earlier key in the run latest named; made a fresh one"
    for name in KEY_FILES:
        try:
            shutil.copy2(source / name, dest / name)  # keeps mode 0600
        except OSError as exc:
            raise ConfigError(f"--reuse-key: cannot copy {source / name}: "
                              f"{exc.strerror}") from exc
    return f"--reuse-key: reusing the aggregator key of {source.parent.name}"
