"""One directory per run under the aggregator's state_dir, and a ``latest`` pointer.

::

    state_dir/
      paillier.key, signing.key, allow_list.json   outlive runs: agents pin the keys
      runs/<run_id>/run.json                        checkpoint (aggregator.checkpoint)
                    global_model.npz, rounds.csv    model and audit log (aggregator.store)
                    open_round/                     accepted updates of the open round
      latest -> runs/<run_id>                       relative symlink, replaced atomically

The directory name is the run id the protocol announces in every round message:
``20261123-142501-3f9a`` (UTC start time, then random hex, so names sort by start
and two runs started in the same second still differ). A new run never touches
an older run's directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmq.aggregator.checkpoint import Checkpoints, RunCheckpoint, StartPoint, start_point
from fedmq.aggregator.runspec import load_run_spec
from fedmq.aggregator.store import RunStore
from fedmq.models import ModelSpec
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import check_name
from fedmq.runtime.files import write_atomic

if TYPE_CHECKING:
    from fedmq.aggregator.config import AggregatorConfig

log = logging.getLogger(__name__)
# What a run owns; directly in state_dir they are the layout from before run directories.
RUN_FILES = ("run.json", "global_model.npz", "rounds.csv", "open_round")


def new_run_id(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(2)


def spec_digest(spec: ModelSpec) -> str:
    """What run.json records of the model spec: a changed spec is a new run."""
    fields = asdict(spec)
    for name in ("target_center", "target_scale"):  # as before they existed, when unset
        if fields[name] is None:
            del fields[name]
    doc = json.dumps(fields, sort_keys=True, default=list)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def point_latest(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target``, atomically (never briefly absent)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, link.parent), tmp)
        os.replace(tmp, link)
    except OSError as exc:
        raise ConfigError(f"cannot point {link} at {target}: {exc.strerror}") from exc


def read_latest(link: Path) -> Path | None:
    """The run directory ``link`` points to; None if there is no link yet."""
    if not link.is_symlink() and not link.exists():
        return None
    if not link.is_dir():
        raise ConfigError(f"{link} does not point to a run directory; remove it (the next "
                          "start begins a new run)")
    return link.resolve()


class RunDirs:
    """The run directories of one state_dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.root = state_dir / "runs"
        self.latest_link = state_dir / "latest"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create state_dir {state_dir}: {exc.strerror}") from exc

    def check_writable(self) -> None:
        """Fail at start, not after the first round's work, when state cannot be saved."""
        for d in (self.state_dir, self.root):
            if d is self.root and not d.exists():
                continue
            probe = d / f".write-test.{os.getpid()}"
            try:
                write_atomic(probe, b"")
                probe.unlink()
            except OSError as exc:
                raise ConfigError(f"cannot write in state_dir {d}: {exc.strerror}") from exc

    def latest(self) -> Path | None:
        return read_latest(self.latest_link)

    def create(self, run_id: str) -> Path:
        """A new, empty run directory, and ``latest`` pointing to it."""
        check_name(run_id, "run id")  # it becomes a directory name
        run_dir = self.root / run_id
        try:
            run_dir.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror}") from exc
        point_latest(self.latest_link, run_dir)
        return run_dir

    def migrate_legacy(self) -> Path | None:
        """Move run state kept directly in state_dir (before run directories) into
        ``runs/<its run id>/`` and point ``latest`` at it; None if there was none."""
        found = [n for n in RUN_FILES if (self.state_dir / n).exists()
                 or (self.state_dir / n).is_symlink()]
        if not found:
            return None
        run_id = _legacy_run_id(self.state_dir / "run.json")
        if run_id is None or (self.root / run_id).exists():
            run_id = new_run_id()
        dest = self.root / run_id
        try:
            dest.mkdir(parents=True)
            for name in found:
                os.rename(self.state_dir / name, dest / name)
        except OSError as exc:
            raise ConfigError(f"cannot move the run state in {self.state_dir} into {dest}: "
                              f"{exc.strerror}") from exc
        point_latest(self.latest_link, dest)
        log.warning("moved %s from %s into %s (each run now has its own directory)",
                    ", ".join(found), self.state_dir, dest)
        return dest


def _legacy_run_id(path: Path) -> str | None:
    # Only to name the directory: the checkpoint itself is read strictly on resume.
    try:
        run_id = json.loads(path.read_bytes().decode()).get("run_id")
        return check_name(run_id, "run id")
    except (OSError, ValueError, AttributeError, ConfigError):
        return None


def open_run(runs: RunDirs, checkpoints: Checkpoints, store: RunStore,
             config: AggregatorConfig, *, identity: tuple[str, str, str], model_digest: str,
             new_id: str | None = None) -> tuple[StartPoint, RunCheckpoint | None]:
    """Resume the run ``latest`` names, or create a new one; point ``checkpoints`` and
    ``store`` at it. Returns where to start and the resumed run's checkpoint.

    Nothing is created before the resumed run's files are checked: a broken one
    stops the start with one line naming it, and the state stays as it was.
    """
    runs.migrate_legacy()
    prior = runs.latest() if config.resume else None
    if prior is not None:
        checkpoints.use(prior)
        store.use(prior, prior.name)
        saved = checkpoints.load()
        why = why_not_resume(saved, prior, identity=identity, model_digest=model_digest,
                             store=store, spec=config.spec)
        if why is None and saved is not None:
            store.use(prior, saved.run_id)
            store.check_writable()
            # A run trains the spec its statistics round completed; a run without one
            # (datasheet values, or from before statistics rounds) trains [model] as is.
            spec = load_run_spec(prior, config.spec) or config.spec
            params, saved_version = store.load_params(spec)
            start = start_point(saved, identity=identity, saved_params=params,
                                saved_version=saved_version, fresh_run_id=new_run_id(),
                                model_file=str(store.model_path))
            return replace(start, spec=spec), saved
        # A finished run is the normal case of starting again, and so is a run stopped
        # before its first round (nothing was trained): nothing is wrong, nothing lost.
        finished = saved is None or saved.status == "finished"
        log.log(logging.INFO if finished else logging.WARNING,
                "not resuming %s: %s; starting a new run", prior, why)
    run_id = new_id or new_run_id()
    run_dir = runs.create(run_id)
    checkpoints.use(run_dir)
    store.use(run_dir, run_id)
    return StartPoint(run_id, 1, 0, np.zeros(config.spec.n_params)), None


def why_not_resume(cp: RunCheckpoint | None, where: Path, *, identity: tuple[str, str, str],
                   model_digest: str, store: RunStore, spec: ModelSpec) -> str | None:
    """Why the run ``cp`` describes cannot go on under this config (a new run starts
    instead), or None to resume it. Another fleet or key is an error: that state
    belongs to another aggregator, not to an earlier configuration of this one."""
    fleet, fingerprint, codec_digest = identity
    if cp is None:
        return "it has no run.json (it never opened a round)"
    if cp.status == "finished":
        return f"run {cp.run_id} finished"
    if (cp.fleet, cp.key_fingerprint) != (fleet, fingerprint):
        raise ConfigError(f"{where / 'run.json'}: the run belongs to another fleet or key; "
                          "set [output] resume = false to start a new run beside it")
    if cp.codec_digest != codec_digest:
        return (f"run {cp.run_id} used other [codec], [statistics] or [privacy] settings "
                "(with differential privacy the new run starts a new budget)")
    if (cp.model_digest and cp.model_digest != model_digest) or (
            not cp.model_digest and store.saved_spec() not in (None, spec)):
        return f"run {cp.run_id} trained another model than [model] now describes"
    return None
