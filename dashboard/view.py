"""The fleet as a dashboard sees it: messages in, one JSON-ready state out (no I/O).

Every message from the aggregator (key, round, progress, metrics) must carry the
signature of the aggregator's pinned signing key; a status is taken from the
device's own topic (the broker lets only that device write it). Anything else is
ignored and counted by reason, never raised: a dashboard must outlive any payload.
Only ids and counts are kept; no message here carries one device's data.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedmq.protocol.crypto.signing import (
    Ed25519PublicKey,
    public_key_from_hex,
    public_key_hex,
)
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import MetricsMessage, PubKeyMessage, RoundMessage, StatusMessage
from fedmq.protocol.progress import ProgressMessage
from fedmq.protocol.topics import Topics

_Signed = TypeVar("_Signed", RoundMessage, ProgressMessage, MetricsMessage)

# Round rows the page and /metrics show; the columns of rounds.csv they come from.
QUALITY = ("accuracy", "balanced_accuracy", "r2", "mse", "mae")
TASKS = {"linear": "regression", "logistic": "classification", "softmax": "classification"}


def round_row(m: MetricsMessage) -> dict[str, Any]:
    """One closed round as the page draws it (the metrics message's numbers)."""
    ev: dict[str, Any] = m.evaluation if isinstance(m.evaluation, dict) else {}
    found = ev.get("metrics")
    metrics: dict[str, Any] = found if isinstance(found, dict) else {}
    row: dict[str, Any] = {
        "round": int(m.round_id), "phase": str(m.phase), "closed_at": float(m.issued_at),
        "seconds": float(m.seconds), "reported": int(m.reported), "expected": int(m.expected),
        "rejected": int(m.rejected), "update_bytes": int(m.update_bytes),
        "model_bytes": int(m.model_bytes), "closed_by": str(m.closed_by),
        "loss": _number(ev.get("loss")), "epsilon": _number(m.epsilon),
        "rejected_by": {str(k): int(v) for k, v in dict(m.rejected_by).items()},
    }
    row.update({q: _number(metrics.get(q)) for q in QUALITY})
    return row


def _number(value: object) -> float | None:
    """A finite number, else None (JSON has no NaN: the page's JSON.parse would fail)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value):
        return float(value)
    return None


@dataclass
class FleetView:
    """Folds the fleet's messages into the state the page and ``/metrics`` show."""

    topics: Topics
    signing_key: Ed25519PublicKey | None  # None: a finished run read from disk, no messages
    source: str = "live"
    connected: bool = False
    run: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    progress: ProgressMessage | None = None
    rounds: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)  # device -> online | offline
    privacy: dict[str, float | None] | None = None
    key: dict[str, Any] | None = None  # the aggregator's announced Paillier key, once seen
    ignored: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_fleet(cls, topics: Topics, signing_key_hex: str, **kw: Any) -> FleetView:
        return cls(topics=topics, signing_key=public_key_from_hex(signing_key_hex), **kw)

    # --- messages in ---------------------------------------------------------------
    def observe(self, topic: str, payload: bytes) -> None:
        """The aggregator's own publications (its [metrics] endpoint): the ones a
        dashboard folds; notices and trustee requests are none of the view's business."""
        t = self.topics
        if topic in (t.round, t.progress, t.metrics, t.pubkey):
            self.apply(topic, payload)

    def apply(self, topic: str, payload: bytes) -> bool:
        """Fold one message; False (and a count under ``ignored``) when it is not taken."""
        t = self.topics
        try:
            with self._lock:
                if topic == t.round:
                    self._round(self._signed(RoundMessage, payload))
                elif topic == t.progress:
                    self._progress(self._signed(ProgressMessage, payload))
                elif topic == t.metrics:
                    self._metrics(self._signed(MetricsMessage, payload))
                elif topic == t.pubkey:
                    self._pubkey(PubKeyMessage.from_bytes(payload))
                elif (agent := t.agent_of(topic, "status")) is not None:
                    self._status(agent, payload)
                else:
                    self.ignored["unexpected-topic"] += 1
                    return False
        except _Ignored as exc:
            with self._lock:
                self.ignored[str(exc)] += 1
            return False
        except ProtocolError:
            with self._lock:
                self.ignored["malformed"] += 1
            return False
        except (TypeError, ValueError, KeyError, AttributeError):
            with self._lock:
                self.ignored["malformed"] += 1
            return False
        return True

    def _signed(self, kind: type[_Signed], payload: bytes) -> _Signed:
        """Parsed (else "malformed"), then signed by the pinned key (else "forged")."""
        kind.from_bytes(payload)
        if self.signing_key is None:
            raise _Ignored("no-key")
        try:
            return kind.from_bytes(payload, verify_with=self.signing_key)
        except ProtocolError:
            raise _Ignored("forged") from None

    def _pubkey(self, m: PubKeyMessage) -> None:
        # Self-signed: it is the aggregator's only if it names the pinned key.
        if self.signing_key is None or m.signing_key != public_key_hex(self.signing_key):
            raise _Ignored("forged")
        if m.fleet != self.topics.fleet:
            raise _Ignored("other-fleet")
        self.key = {"fingerprint": m.fingerprint, "issued_at": m.issued_at}

    def _new_run(self, run_id: str) -> None:
        if self.run.get("id") not in (None, "", run_id):
            self.rounds.clear()
            self.progress = None
            self.privacy = None
        self.run["id"] = run_id

    def _round(self, m: RoundMessage) -> None:
        if m.fleet != self.topics.fleet:
            raise _Ignored("other-fleet")
        if m.issued_at < self.run.get("issued_at", float("-inf")):
            raise _Ignored("stale")
        self._new_run(m.run_id)
        self.task = TASKS.get(m.spec.kind, self.task)
        self.run.update(phase=m.state, reason=m.reason, round=m.round_id,
                        model_version=m.model_version, issued_at=m.issued_at,
                        deadline=m.deadline if m.phase is not None else None)

    def _progress(self, m: ProgressMessage) -> None:
        if m.fleet != self.topics.fleet:
            raise _Ignored("other-fleet")
        old = self.progress
        if old is not None and old.run_id == m.run_id and m.issued_at < old.issued_at:
            raise _Ignored("stale")
        if self.run.get("id") not in (None, "", m.run_id):
            if m.issued_at < self.run.get("issued_at", 0.0):
                raise _Ignored("stale")  # the progress of an earlier run, retained
            self._new_run(m.run_id)
        self.run.setdefault("id", m.run_id)
        self.run["rounds"] = m.rounds
        self.progress = m

    def _metrics(self, m: MetricsMessage) -> None:
        if m.fleet != self.topics.fleet:
            raise _Ignored("other-fleet")
        run_id = str(m.run_id) or str(self.run.get("id", ""))
        if run_id and self.run.get("id") not in (None, "", run_id):
            if m.issued_at < self.run.get("issued_at", 0.0):
                raise _Ignored("stale")
            self._new_run(run_id)
        row = round_row(m)
        self.rounds[(row["phase"], row["round"])] = row
        if m.rounds:
            self.run["rounds"] = int(m.rounds)
        if m.epsilon is not None:
            self.privacy = {"epsilon": _number(m.epsilon), "delta": _number(m.delta),
                            "budget": _number(m.epsilon_budget)}

    def _status(self, agent: str, payload: bytes) -> None:
        if not payload:  # a cleared retained status
            self.statuses.pop(agent, None)
            return
        status = StatusMessage.from_bytes(payload)
        if status.agent_id != agent:
            raise _Ignored("wrong-topic")
        self.statuses[agent] = status.state

    # --- state out -----------------------------------------------------------------
    def state(self, now: float | None = None) -> dict[str, Any]:
        """The JSON the page polls (its shape: dashboard/static/app.js)."""
        now = time.time() if now is None else now
        with self._lock:
            run = {"id": self.run.get("id", ""), "phase": self.run.get("phase", "waiting"),
                   "reason": self.run.get("reason", ""), "round": self.run.get("round"),
                   "rounds": self.run.get("rounds"),
                   "model_version": self.run.get("model_version"),
                   "opened_at": None, "deadline": self.run.get("deadline")}
            devices = self._devices(now, run)
            rounds = sorted(self.rounds.values(), key=_order)
            rejected: Counter[str] = Counter()
            for row in rounds:
                rejected.update(row["rejected_by"])
            p = self.progress
            relays: dict[str, list[str]] = {}
            if p is not None and p.run_id == run["id"] and not p.closed:
                rejected.update(p.rejected)
                relays = {r: list(d) for r, d in p.relays.items()}
            return {"fleet": self.topics.fleet, "source": self.source,
                    "connected": self.connected, "now": now, "run": run,
                    "devices": devices, "relays": relays,
                    "rounds": [{k: v for k, v in r.items() if k != "rejected_by"}
                               for r in rounds],
                    "rejected": dict(sorted(rejected.items())), "privacy": self.privacy,
                    "ignored": dict(sorted(self.ignored.items())), "task": self.task,
                    "key": self.key}

    def _devices(self, now: float, run: dict[str, Any]) -> dict[str, Any]:
        online = sorted(a for a, s in self.statuses.items() if s == "online")
        out: dict[str, Any] = {"enrolled": None, "online": len(online), "expected": [],
                               "reported": [], "waiting": [], "late": [], "skipped": {}}
        p = self.progress
        if p is None or p.run_id != run["id"]:
            return out
        out.update(enrolled=p.enrolled, online=p.online)
        if p.closed or p.round_id != run["round"] or run["phase"] not in (p.phase,):
            return out
        pending = sorted(set(p.expected) - set(p.reported) - set(p.skipped))
        late = now > p.deadline
        run["opened_at"], run["deadline"] = p.opened_at, p.deadline
        out.update(expected=list(p.expected), reported=list(p.reported),
                   waiting=[] if late else pending, late=pending if late else [],
                   skipped=dict(p.skipped))
        return out


class _Ignored(Exception):
    """A message that parses but is not for this view; its text is the counter's reason."""


_PHASE_ORDER = {"statistics": 0, "training": 1, "evaluation": 2}


def _order(row: dict[str, Any]) -> tuple[int, int]:
    return row["round"], _PHASE_ORDER.get(row["phase"], 3)
