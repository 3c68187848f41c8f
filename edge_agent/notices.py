"""What an agent tells its operator when the aggregator says why it rejected an update.

One line per notice, with the fix: for enrollment the exact ``fedmq enroll``
command (the agent knows its own public key, the operator does not).
"""

from __future__ import annotations

import logging

from fedmq.protocol.crypto.signing import Ed25519PublicKey
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.notices import KEY_MISMATCH, NOT_ENROLLED, OTHER_KEY, WRONG_MODEL, NoticeMessage


def enroll_command(agent_id: str, public_hex: str) -> str:
    return (f"fedmq enroll --config aggregator.toml --agent {agent_id} "
            f"--public-key {public_hex}")


def explain(notice: NoticeMessage, public_hex: str) -> str:
    """The operator's line for ``notice``, sent to the agent whose key is ``public_hex``."""
    agent, head = notice.agent_id, f"round {notice.round_id}: "
    if notice.update_key and notice.update_key != public_hex:
        # The rejected update was validly signed, but not by this device.
        return (head + f"the aggregator rejected an update sent as {agent} but signed with "
                f"key {notice.update_key[:16]}..., not this device's {public_hex[:16]}...: "
                f"another device is configured with the id {agent}; give each device its "
                "own [agent] id")
    if notice.code == NOT_ENROLLED:
        return (head + "the aggregator does not know this device's signing key: on the "
                f"gateway run  {enroll_command(agent, public_hex)}")
    if notice.code == OTHER_KEY:
        return (head + f"the aggregator has another signing key enrolled for {agent} "
                "(was this device's key replaced?): on the gateway run  "
                f"{enroll_command(agent, public_hex)}  (replaces the old key)")
    if notice.code == WRONG_MODEL:
        return (head + f"the aggregator rejected this device's update: {notice.text}; "
                "check [data] features and label against the gateway's [model]")
    if notice.code == KEY_MISMATCH:
        return (head + f"the aggregator rejected this device's update: {notice.text}; this "
                "device encrypted for another aggregator key or codec: check [fleet] "
                "key_fingerprint and the trusted_* files in [agent] state_dir")
    return head + f"the aggregator rejected this device's update ({notice.code}): {notice.text}"


class NoticeReader:
    """Reads the notices on this agent's topic: one line per code and run, forgeries ignored."""

    def __init__(self, fleet: str, agent_id: str, public_hex: str, log: logging.Logger) -> None:
        self._fleet, self._agent_id, self._public_hex = fleet, agent_id, public_hex
        self._log = log
        self._explained: set[str] = set()  # notice codes explained in this run
        self._forged_logged = False

    def new_run(self) -> None:
        self._explained.clear()

    def read(self, payload: bytes, aggregator_key: Ed25519PublicKey | None,
             run_id: str | None) -> None:
        if aggregator_key is None:
            return  # no trusted aggregator key yet: nothing to tell a genuine notice by
        try:
            notice = NoticeMessage.from_bytes(payload, verify_with=aggregator_key)
        except ProtocolError as exc:
            if not self._forged_logged:
                self._forged_logged = True
                self._log.warning("ignoring a notice not signed by the trusted aggregator: %s",
                                  exc)
            return
        if (notice.fleet != self._fleet or notice.agent_id != self._agent_id
                or (run_id is not None and notice.run_id != run_id)):
            return
        if notice.code in self._explained:
            return
        self._explained.add(notice.code)
        self._log.error("%s", explain(notice, self._public_hex))
