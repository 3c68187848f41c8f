"""Why a device sat out a round: the ``skipped`` part of its retained status.

A device that cannot use its data for a round says so instead of going quiet,
so the gateway can count the reasons. A reason is a fixed code plus a short,
generic detail: it never carries the device's data values beyond what the fix
needs (e.g. "labels must lie in [0, 3), got 5").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.topics import check_name

SKIP_CODES = ("bad-labels", "class-outside-model", "feature-mismatch", "data-error", "diverged",
              "privacy-budget")
MAX_DETAIL = 200  # characters


@dataclass(frozen=True)
class Skip:
    """One device skipped round ``round_id`` of run ``run_id`` for reason ``code``."""

    run_id: str
    round_id: int
    code: str
    detail: str = ""

    def __post_init__(self) -> None:
        check_name(self.run_id, "run id", ProtocolError)
        # bool is an int in Python; a round number never is one.
        if (not isinstance(self.round_id, int) or isinstance(self.round_id, bool)
                or self.round_id < 0):
            raise ProtocolError(f"skip round_id must be an integer >= 0, got {self.round_id!r}")
        if self.code not in SKIP_CODES:
            raise ProtocolError(f"skip code must be one of {SKIP_CODES}, got {self.code!r}")
        if not isinstance(self.detail, str) or len(self.detail) > MAX_DETAIL:
            raise ProtocolError(f"skip detail must be a string of at most {MAX_DETAIL} "
                                "characters")

    @classmethod
    def make(cls, run_id: str, round_id: int, code: str, detail: str) -> Skip:
        """A Skip whose detail is cut to fit (a local error text may be longer)."""
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL - 3] + "..."
        return cls(run_id=run_id, round_id=round_id, code=code, detail=detail)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "round_id": self.round_id, "code": self.code,
                "detail": self.detail}

    @classmethod
    def from_dict(cls, doc: Any) -> Skip:
        if not isinstance(doc, dict):
            raise ProtocolError("skipped must be a JSON object")
        # Unknown fields are ignored: a newer device may say more than we read.
        for key, kind in (("run_id", str), ("round_id", int), ("code", str), ("detail", str)):
            value = doc.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ProtocolError(f"skipped field {key!r} missing or not a {kind.__name__}")
        return cls(run_id=doc["run_id"], round_id=doc["round_id"], code=doc["code"],
                   detail=doc["detail"])
