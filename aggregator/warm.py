"""Warm start: a scheduled run begins from the last finished run's final model.

The new run keeps a copy of that model (``warm_start.npz`` in its own directory) when
it is created, so a restart anywhere before its first model is saved warm-starts the
same way. The copy's spec may differ from the new run's in its standardisation only (a
new statistics round): the parameters are then carried over exactly
(models.rescale); any other difference skips the warm start with one INFO line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmq.models import ModelError, ModelSpec, load_model
from fedmq.models.rescale import restandardize
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.files import write_atomic

log = logging.getLogger("fedmq.aggregator.service")
FILE = "warm_start.npz"


def finished(run_dir: Path) -> bool:
    """True when the run in ``run_dir`` finished (its run.json says so)."""
    try:
        return bool(json.loads((run_dir / "run.json").read_bytes()).get("status") == "finished")
    except (OSError, ValueError, AttributeError):
        return False


def keep_warm_start(prior: Path, run_dir: Path) -> bool:
    """Copy the finished run ``prior``'s final model into the new ``run_dir`` (or pass on
    the warm start of a run killed before it opened a round: it trained nothing)."""
    if finished(prior):
        source = prior / "global_model.npz"
    elif not (prior / "run.json").exists():
        source = prior / FILE
    else:
        return False
    if not source.exists():
        return False
    try:
        write_atomic(run_dir / FILE, source.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot copy {source} into {run_dir}: {exc.strerror}") from exc
    return True


def warm_params(run_dir: Path, spec: ModelSpec) -> NDArray[np.float64] | None:
    """The warm-start parameters for ``spec``; None when the run has none or they do not fit."""
    path = run_dir / FILE
    if not path.exists():
        return None
    try:
        old_spec, params, meta = load_model(path)
        mapped = restandardize(old_spec, spec, params)
    except ModelError as exc:
        log.info("no warm start: %s (%s); round 1 starts from zero", exc, path)
        return None
    rescaled = "" if old_spec == spec else ", carried into this run's new standardisation"
    log.info("warm start from the last run's final model (version %s%s)",
             meta.get("model_version", "?"), rescaled)
    return mapped
