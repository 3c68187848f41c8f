"""One open round: which updates are accepted, their running ciphertext sum, when it closes.

Pure bookkeeping, clock passed in: the service feeds it decoded updates and
the current time and asks whether the round is done. A rejected update leaves
the state exactly as it was, so a bad payload can never cost accepted data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.codec import Codec
from protocol.paillier import PaillierPublicKey, add_ciphertexts
from protocol.wire import UpdateMessage


class Rejected(Exception):
    """An update that is not counted, with the reason for the log."""


@dataclass
class RoundState:
    """The open round: closes once all expected agents reported, or at the deadline with quorum."""

    fleet: str
    round_id: int
    expected: frozenset[str]
    deadline: float
    quorum: int
    n_values: int
    key_fingerprint: str
    codec_digest: str
    codec: Codec
    public_key: PaillierPublicKey
    opened_at: float
    accepted: list[str] = field(default_factory=list)
    rejected: int = 0
    ciphertext_sum: list[int] | None = None

    def offer(self, update: UpdateMessage, topic_agent: str) -> None:
        """Add ``update`` to the sum or raise Rejected; never half-applies."""
        try:
            self._check(update, topic_agent)
        except Rejected:
            self.rejected += 1
            raise
        if self.ciphertext_sum is None:
            self.ciphertext_sum = list(update.ciphertexts)
        else:
            self.ciphertext_sum = add_ciphertexts(self.public_key, self.ciphertext_sum,
                                                  update.ciphertexts)
        self.accepted.append(update.agent_id)

    def _check(self, u: UpdateMessage, topic_agent: str) -> None:
        if u.agent_id != topic_agent:
            raise Rejected(f"update names agent {u.agent_id!r} but came on {topic_agent!r}'s topic")
        if u.fleet != self.fleet:
            raise Rejected(f"update is for fleet {u.fleet!r}")
        if u.round_id < self.round_id:
            raise Rejected(f"late update for closed round {u.round_id}")
        if u.round_id > self.round_id:
            raise Rejected(f"update for round {u.round_id}, which is not open")
        if u.key_fingerprint != self.key_fingerprint or u.codec_digest != self.codec_digest:
            raise Rejected("update made for another key or codec contract")
        if u.n_values != self.n_values:
            raise Rejected(f"update carries {u.n_values} values, the model needs {self.n_values}")
        if len(u.ciphertexts) != self.codec.plaintext_count(self.n_values):
            raise Rejected(f"update has {len(u.ciphertexts)} ciphertexts")
        if u.agent_id in self.accepted:
            # A QoS 1 redelivery or a second try: the first one counts, once.
            raise Rejected("duplicate update in this round")
        if len(self.accepted) >= self.codec.params.max_agents:
            raise Rejected(f"round already holds max_agents={self.codec.params.max_agents} updates")

    @property
    def missing(self) -> frozenset[str]:
        return self.expected - set(self.accepted)

    def close_reason(self, now: float) -> str | None:
        """'all' once every expected agent reported, 'deadline' past it with quorum, else None."""
        if self.expected and not self.missing and len(self.accepted) >= self.quorum:
            return "all"
        if now >= self.deadline and len(self.accepted) >= self.quorum:
            return "deadline"
        return None
