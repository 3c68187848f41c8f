"""What an agent remembers of the run it serves: rounds answered, rounds left to others, and
the signed bytes it sent last (sent again when the aggregator announces that round again).

Nothing here outlives the process: a restarted agent learns the open round from the next
announcement, and the aggregator counts an identical payload once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedmq.edge_agent.trainer import LocalUpdate
from fedmq.protocol.messages import RoundMessage

# Plaintext updates kept of the newest training rounds (tests and the simulation read
# them), ~380 bytes each for a 4-parameter model (more for a larger one): kept for every
# round, a run of 100,000 rounds would hold ~38 MB of a device's 60 MB budget.
HISTORY_KEPT = 64


@dataclass
class Sent:
    run_id: str
    round_id: int
    payload: bytes
    answered: frozenset[float]  # issue times of the announcements this payload answered


@dataclass
class RunMemory:
    run_id: str | None = None
    history: dict[int, LocalUpdate] = field(default_factory=dict)  # newest training rounds
    served: set[int] = field(default_factory=set)  # rounds of any phase served in this run
    not_selected: set[int] = field(default_factory=set)  # rounds sampled without this agent
    sent: Sent | None = None

    def join(self, run_id: str) -> bool:
        """Serve ``run_id`` from now on; True when it is another run than the one served."""
        if run_id == self.run_id:
            return False
        self.run_id = run_id
        self.history.clear()
        self.served.clear()
        self.not_selected.clear()
        return True

    def answered(self, msg: RoundMessage, update: LocalUpdate | None) -> None:
        """Round ``msg`` is answered (``update``: a training round's plaintext update)."""
        self.served.add(msg.round_id)
        if update is not None:
            self.history[msg.round_id] = update
            while len(self.history) > HISTORY_KEPT:  # dicts keep insertion order
                del self.history[next(iter(self.history))]

    def sending(self, msg: RoundMessage, payload: bytes) -> None:
        """``payload`` answers ``msg`` and is about to leave."""
        self.sent = Sent(msg.run_id, msg.round_id, payload, frozenset({msg.issued_at}))

    def resend(self, msg: RoundMessage) -> bytes | None:
        """The payload to send again for a repeated announcement of the round it answered.

        A new announcement has a new issue time; a broker delivering the same retained
        message twice does not make the agent send twice. Any phase: statistics, training
        and the final evaluation.
        """
        sent = self.sent
        if sent is None or msg.phase is None or (sent.run_id, sent.round_id) != (
                msg.run_id, msg.round_id) or msg.issued_at in sent.answered:
            return None
        self.sent = Sent(sent.run_id, sent.round_id, sent.payload,
                         sent.answered | {msg.issued_at})
        return sent.payload
