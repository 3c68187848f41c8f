"""A dashboard state as the page polls it, for the dashboard's unit tests."""

from __future__ import annotations

from typing import Any

STATE: dict[str, Any] = {
    "fleet": "f", "source": "live", "connected": True, "now": 1.0,
    "run": {"id": "run1", "phase": "training", "reason": "", "round": 3, "rounds": 5,
            "model_version": 2, "opened_at": 0.0, "deadline": 9.0},
    "devices": {"enrolled": 4, "online": 3, "expected": ["a", "b"], "reported": ["a"],
                "waiting": ["b"], "late": [], "skipped": {}},
    "relays": {}, "rejected": {"forged": 2},
    "rounds": [{"round": r, "phase": "training", "closed_at": 0.0, "seconds": 1.0,
                "reported": 3, "expected": 3, "rejected": 1, "update_bytes": 100,
                "model_bytes": 10, "closed_by": "all", "loss": 0.5, "epsilon": None,
                "accuracy": 0.9, "balanced_accuracy": 0.8, "r2": None, "mse": None,
                "mae": None} for r in (1, 2)],
    "privacy": {"epsilon": 1.5, "delta": 1e-5, "budget": 8.0}, "ignored": {"malformed": 1},
    "task": "classification", "key": None,
}
