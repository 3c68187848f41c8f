"""The model spec a run trains: the config's [model], completed by its statistics round.

``statistics.json`` in the run's directory keeps the spec the statistics round
derived (center/scale and the label's) and the pooled statistics behind it, so
a resumed run announces exactly the preprocessing its parameters were trained
with, and an operator can read what the fleet's data looks like in aggregate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from fedmq.models import ModelError, ModelSpec
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.sums.statistics import FleetStatistics
from fedmq.runtime.files import write_atomic

SCHEMA = "fedmq.run-statistics/1"
FILE = "statistics.json"


def save_run_spec(run_dir: Path, spec: ModelSpec, stats: FleetStatistics,
                  warnings: list[str], group_rows: Mapping[frozenset[str], int] | None = None
                  ) -> Path:
    """``group_rows``: the rows of each group of devices whose sums were decrypted (-1: left
    out), so the consistency checks of later rounds survive a restart."""
    path = run_dir / FILE
    doc = {"schema": SCHEMA, "spec": spec.to_dict(), "statistics": stats.to_dict(),
           "warnings": warnings, "groups": [{"devices": sorted(g), "rows": rows} for g, rows
                                            in sorted((group_rows or {}).items(),
                                                      key=lambda item: sorted(item[0]))]}
    try:
        write_atomic(path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    return path


def load_run_spec(run_dir: Path, config_spec: ModelSpec) -> ModelSpec | None:
    """The run's derived spec, or None if the run has no statistics (yet).

    It must be the config's model with preprocessing filled in: anything else
    means the file does not belong to this configuration.
    """
    path = run_dir / FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} file")
        spec = ModelSpec.from_dict(doc["spec"])
    except (OSError, ValueError, KeyError, TypeError, ModelError) as exc:
        raise ConfigError(f"{path}: cannot read the run's statistics ({exc}); move the run "
                          "away or set [output] resume = false") from exc
    same = (spec.kind, spec.features, spec.n_classes) == (
        config_spec.kind, config_spec.features, config_spec.n_classes)
    given = all(getattr(config_spec, f) in (None, getattr(spec, f))
                for f in ("center", "scale", "target_center", "target_scale"))
    if not (same and given):
        raise ConfigError(f"{path} describes another model than [model]; set [output] "
                          "resume = false to start a new run")
    return spec


def load_group_rows(run_dir: Path) -> dict[frozenset[str], int]:
    """The statistics round's rows per group of devices, as ``save_run_spec`` wrote them;
    empty when the file has none (an older run: the checks that need them are skipped)."""
    try:
        groups = json.loads((run_dir / FILE).read_bytes()).get("groups", [])
        return {frozenset(str(d) for d in g["devices"]): int(g["rows"]) for g in groups}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
