"""A finished (or running) run read from its directory, in the live page's shape.

``fedmq dashboard --run DIR`` takes an aggregator run directory (``runs/<id>/`` with
``run.json`` and ``rounds.csv``), a state directory (its ``latest`` run), or a
``fedmq simulate`` output directory (``aggregator/latest``; its ``metrics.csv`` adds
the bytes per round, which ``rounds.csv`` does not hold). Read-only.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from fedmq.aggregator.store import RunStore
from fedmq.dashboard.view import QUALITY, TASKS, FleetView
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics


def find_run(path: Path) -> Path:
    """The aggregator run directory ``path`` names (or leads to through ``latest``)."""
    for candidate in (path, path / "latest", path / "aggregator" / "latest"):
        if (candidate / "rounds.csv").is_file() and (candidate / "run.json").is_file():
            return candidate.resolve()
    raise ConfigError(f"{path}: no run here (a run directory holds run.json and rounds.csv; "
                      "give one under <state_dir>/runs/, the state dir itself, or a fedmq "
                      "simulate output directory)")


def _cell(row: dict[str, str], key: str) -> float | None:
    """A finite number, else None (a page's JSON.parse knows no NaN)."""
    try:
        value = float(row[key]) if row.get(key) not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return doc


def _bytes_per_round(path: Path) -> dict[tuple[str, int], tuple[int, int]]:
    """(phase, round) -> (update bytes, model bytes) from a simulation's metrics.csv."""
    for candidate in (path / "metrics.csv",):
        if not (path / "aggregator").is_dir() or not candidate.is_file():
            continue
        out = {}
        try:
            with candidate.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    key = (row.get("phase") or "training", int(row["round"]))
                    out[key] = (int(row.get("update_bytes") or 0),
                                int(row.get("model_bytes") or 0))
        except (OSError, ValueError, KeyError, csv.Error):
            return {}  # bytes are extra: a run without them still shows
        return out
    return {}


def load_run(path: Path) -> FleetView:
    """A read-only view of the run at ``path`` (``source = "run"``)."""
    run_dir = find_run(path)
    info = _read_json(run_dir / "run.json")
    run_id = str(info.get("run_id") or run_dir.name)
    view = FleetView(topics=Topics(str(info.get("fleet") or "fleet")), signing_key=None,
                     source="run")
    rows = RunStore(run_dir, run_id).log_rows()
    sizes = _bytes_per_round(path)
    for row in rows:
        phase = row.get("phase") or "training"
        try:
            round_id = int(row["round"])
        except (KeyError, ValueError):
            raise ConfigError(f"{run_dir / 'rounds.csv'}: a row without a round number") \
                from None
        update_bytes, model_bytes = sizes.get((phase, round_id), (0, 0))
        entry: dict[str, Any] = {
            "round": round_id, "phase": phase, "closed_at": None,
            "seconds": _cell(row, "seconds"), "reported": int(_cell(row, "reported") or 0),
            "expected": int(_cell(row, "expected") or 0),
            "rejected": int(_cell(row, "rejected") or 0), "update_bytes": update_bytes,
            "model_bytes": model_bytes, "closed_by": row.get("closed_by", ""),
            "loss": _cell(row, "fleet_loss"), "epsilon": _cell(row, "epsilon"),
            "rejected_by": {}}
        entry.update({q: _cell(row, f"fleet_{q}") for q in QUALITY})
        view.rounds[(phase, round_id)] = entry
    training = [r for r in view.rounds.values() if r["phase"] == "training"]
    # run.json's status: finished, or open/closed when the aggregator stopped mid-run (it
    # resumes there on its next start).
    finished = info.get("status") == "finished"
    view.run.update(id=run_id, round=info.get("round_id"), rounds=len(training) or None,
                    model_version=info.get("model_version"),
                    phase="finished" if finished else "interrupted",
                    reason="" if finished else "the aggregator stopped before the run's end; "
                    "it resumes the run at its next start")
    if any(r["accuracy"] is not None for r in view.rounds.values()):
        view.task = "classification"
    elif any(r["r2"] is not None for r in view.rounds.values()):
        view.task = "regression"
    spec_file = run_dir / "statistics.json"
    if view.task is None and spec_file.is_file():
        kind = _read_json(spec_file).get("model", {})
        view.task = TASKS.get(kind.get("kind", "") if isinstance(kind, dict) else "")
    spent = [r["epsilon"] for r in training if r["epsilon"] is not None]
    if spent:
        privacy = _read_json(run_dir / "privacy.json") if (run_dir / "privacy.json").is_file() \
            else {}
        delta = privacy.get("delta")
        view.privacy = {"epsilon": spent[-1], "budget": None,
                        "delta": float(delta) if isinstance(delta, (int, float)) else None}
    return view
