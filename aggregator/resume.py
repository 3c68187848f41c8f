"""A restarted aggregator picks up where it stopped: the run's quarantine and spent budget,
its audit row, and the open round's accepted updates.

Which run to continue (or whether to start a new one) is ``aggregator.runs.open_run``;
this module carries over what that run had decided and accepted before the restart.
"""

from __future__ import annotations

import logging

from fedmq.aggregator.checkpoint import Checkpoints, RunCheckpoint, StartPoint
from fedmq.aggregator.inbound import Inbound, offer_payload
from fedmq.aggregator.privacy import FleetBudget
from fedmq.aggregator.rounds import Redelivered, Rejected, RoundState
from fedmq.aggregator.store import RunStore
from fedmq.protocol.crypto.paillier import PaillierPublicKey
from fedmq.protocol.errors import ProtocolError

log = logging.getLogger("fedmq.aggregator.service")


def carry_over(start: StartPoint, saved: RunCheckpoint | None, *, store: RunStore,
               checkpoints: Checkpoints, inbound: Inbound, budget: FleetBudget | None,
               optimizer: str = "fedavg") -> None:
    """Apply the resumed run's decisions before any device is heard; say where we start.

    Unreadable persisted updates stop the start here, before MQTT, with one line.
    ``optimizer``: [server]'s, as ServerSettings.describe() names it for the start line.
    """
    if saved is not None and saved.run_id == start.run_id:
        for agent in saved.quarantined:
            inbound.quarantine(agent, ())
            log.warning("%s stays quarantined (named a culprit earlier in this run)", agent)
    if budget is not None:
        budget.use(store.run_dir)  # what the resumed run spent already
    if start.round_id == 1 and start.open_round is None:
        log.info("starting run %s in %s (server optimizer %s)", start.run_id, store.run_dir,
                 optimizer)
        return
    if start.open_round is not None:
        checkpoints.load_updates()
    elif store.recover_record():
        log.warning("round %d: audit row recovered into %s", start.round_id - 1, store.log_path)
    log.warning("resuming run %s at round %d (model version %d%s; server optimizer %s)",
                start.run_id, start.round_id, start.version,
                ", open round with its accepted updates" if start.open_round else "", optimizer)


def restore_updates(state: RoundState, checkpoints: Checkpoints,
                    public_key: PaillierPublicKey) -> None:
    """Offer the reopened round the updates it had accepted, checked again as on arrival.

    Exactly the committed batches come back (aggregator.commit): a batch torn by the
    crash was never counted and is not there; a member stored twice counts once.
    """
    for agent, payload in checkpoints.load_updates():
        try:
            offer_payload(state, agent, payload, public_key)
            state.update_bytes += len(payload)
            state.payloads[agent] = payload
        except Redelivered:
            log.info("persisted update of %s stored twice, counted once", agent)
        except (ProtocolError, Rejected) as exc:
            log.error("persisted update of %s no longer valid: %s", agent, exc)
    log.warning("round %d: %d accepted updates restored", state.round_id, len(state.accepted))
