"""The edge agent against a real embedded broker and aggregator (small key, small data)."""

from __future__ import annotations

import logging
import threading

import pytest
from mqtt_support import Probe
from support import AGGREGATOR_SIGNER, agent_config, local_data, wait_until

from fedmq.cli import main
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import PaillierPublicKey, fingerprint, generate_keypair
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.holdings import Holdings
from fedmq.protocol.messages import PubKeyMessage, StatusMessage
from fedmq.protocol.notices import NOT_ENROLLED, WRONG_MODEL, NoticeMessage
from fedmq.protocol.topics import Topics


def test_agent_persists_only_trusted_key_and_final_model(tmp_path, broker_port,
                                                         make_aggregator):
    """Obfuscators live in memory only: nothing of them may reach the state directory.

    (The signing key lives in the test key directory here, set by agent_config.)
    """
    state = tmp_path / "agent-state"
    agent = EdgeAgent(agent_config(broker_port, "pi-1", state_dir=str(state),
                                   obfuscator_pool=8), data=local_data(0, 60))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    make_aggregator(broker_port, rounds=3).run()
    thread.join(10)
    assert not thread.is_alive()
    assert sorted(p.name for p in state.iterdir()) == [
        "final_model.npz", "trusted_aggregator_signing_key", "trusted_key_fingerprint"]
    assert sorted(agent.history) == [1, 2, 3]
    assert agent._pool is None  # closed with the run: every precomputed value dropped


FORGER = Signer.from_seed(b"forger")


def _pubkey(key: PaillierPublicKey, signer: Signer) -> bytes:
    return PubKeyMessage(fleet="test", n_hex=format(key.n, "x"), fingerprint=fingerprint(key),
                         codec=CodecParams(), signing_key=signer.public_hex).to_bytes(signer)


@pytest.mark.parametrize("pinned, copies_modulus", [
    (("key_fingerprint", "aggregator_signing_key"), False),
    # The forger copies the genuine modulus: the pinned fingerprint matches,
    # only its own signing key differs (used to be remembered for good).
    (("key_fingerprint",), True),
    # The forger's own key pair: the fingerprint was remembered before the pinned
    # signing key refused the announcement.
    (("aggregator_signing_key",), False),
])
def test_forged_retained_pubkey_is_never_trusted_and_the_genuine_one_wins(
        tmp_path, broker_port, make_aggregator, keypair, caplog, pinned, copies_modulus):
    """Item 9: a forged retained pubkey is on the broker before a (re)started agent
    subscribes. The agent refuses it, remembers nothing of it, keeps listening and
    serves the genuine aggregator once it announces its key again."""
    caplog.set_level(logging.INFO)
    public = keypair[0]
    forged_key = public if copies_modulus else generate_keypair(512)[0]
    forger = Probe(broker_port, "forger")
    assert forger.connect()
    forger.publish(Topics("test").pubkey, _pubkey(forged_key, FORGER), retain=True)
    forger.close()
    genuine = {"key_fingerprint": fingerprint(public),
               "aggregator_signing_key": AGGREGATOR_SIGNER.public_hex}
    state = tmp_path / "agent-state"
    agent = EdgeAgent(agent_config(broker_port, "pi-1", state_dir=str(state),
                                   **{name: genuine[name] for name in pinned}),
                      data=local_data(0, 60))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    wait_until(lambda: "REFUSING" in caplog.text or "TRUST ON FIRST USE" in caplog.text,
               "the agent to judge the forged key")
    try:
        make_aggregator(broker_port, rounds=1, round_timeout=8.0, max_extensions=0).run()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        agent.stop()
        thread.join(5)
    assert sorted(agent.history) == [1]
    for name, value in genuine.items():
        remembered = state / f"trusted_{name}"
        if name in pinned:
            assert not remembered.exists()
        elif remembered.exists():  # first use of the genuine key, never the forged one
            assert remembered.read_text().strip() == value
    assert FORGER.public_hex not in "".join(p.read_text() for p in state.glob("trusted_*"))


def _notice(signer: Signer, **kw: object) -> bytes:
    fields = {"fleet": "test", "agent_id": "pi-1", "run_id": "run1", "round_id": 1,
              "code": NOT_ENROLLED, "text": "agent 'pi-1' is not enrolled", **kw}
    return NoticeMessage(**fields).to_bytes(signer)  # type: ignore[arg-type]


def test_agent_explains_genuine_notices_once_and_ignores_forged_ones(
        broker_port, keypair, caplog):
    caplog.set_level(logging.INFO)
    topics = Topics("test")
    agent = EdgeAgent(agent_config(broker_port, "pi-1"), data=local_data(0, 60))
    own = agent.signer.public_hex
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    aggregator = Probe(broker_port, "aggregator")
    try:
        assert aggregator.connect()
        aggregator.publish(topics.pubkey, _pubkey(keypair[0], AGGREGATOR_SIGNER), retain=True)
        wait_until(lambda: agent._aggregator_key is not None, "the agent to trust the key")
        unsigned = _notice(AGGREGATOR_SIGNER).replace(b'"sig":', b'"gis":')
        for payload in (_notice(FORGER), unsigned, _notice(AGGREGATOR_SIGNER, agent_id="pi-2"),
                        _notice(AGGREGATOR_SIGNER), _notice(AGGREGATOR_SIGNER, round_id=2),
                        _notice(AGGREGATOR_SIGNER, code=WRONG_MODEL, text="3 values",
                                update_key=FORGER.public_hex)):
            aggregator.publish(topics.notice("pi-1"), payload)
        wait_until(lambda: "another device is configured" in caplog.text, "the last notice")
    finally:
        agent.stop()
        thread.join(5)
        aggregator.close()
    said = [r.getMessage() for r in caplog.records
            if r.name == "fedmq.edge_agent.agent" and r.levelno >= logging.WARNING
            and "TRUST ON FIRST USE" not in r.getMessage()]
    assert said == [
        "ignoring a notice not signed by the trusted aggregator: bad signature",
        "round 1: the aggregator does not know this device's signing key: on the gateway "
        f"run  fedmq enroll --config aggregator.toml --agent pi-1 --public-key {own}",
        "round 1: the aggregator rejected an update sent as pi-1 but signed with key "
        f"{FORGER.public_hex[:16]}..., not this device's {own[:16]}...: another device is "
        "configured with the id pi-1; give each device its own [agent] id",
    ]


def test_agent_trains_only_on_the_rows_it_does_not_hold_out(broker_port, make_aggregator):
    agent = EdgeAgent(agent_config(broker_port, "pi-1", holdout=0.2), data=local_data(0, 60))
    assert (agent.train_data.n_samples, agent.eval_data.n_samples) == (48, 12)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    make_aggregator(broker_port, rounds=1).run()
    thread.join(10)
    assert agent.history[1].weight == 48


def test_a_holdout_the_data_file_cannot_fill_stops_the_agent_with_one_line(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("a,l\n1,0\n")
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'pi'\nstate_dir = 'st'\n[data]\npath='d.csv'\n"
                   "features=['a']\nlabel='l'\nholdout=0.5\n")
    assert main(["agent", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedmq: error: data file {tmp_path / 'd.csv'}: [data] holdout = 0.5 of "
                   "1 row(s) leaves no training rows; the data file needs at least 2 rows, "
                   "or set holdout = 0"]


def test_an_agent_without_retained_announcements_asks_and_takes_a_live_copy(
        broker_port, keypair) -> None:
    """A broker node without the retained key (a cluster's other node): the agent's status
    asks, holding nothing; a non-retained copy is checked and trusted like a retained one,
    and the next ask names it. A copy signed by another key is refused the same way."""
    topics = Topics("test")
    pins = {"key_fingerprint": fingerprint(keypair[0]),
            "aggregator_signing_key": AGGREGATOR_SIGNER.public_hex}
    agent = EdgeAgent(agent_config(broker_port, "pi-9", **pins), data=local_data(0, 30))
    watcher = Probe(broker_port, "watcher")
    assert watcher.connect() and watcher.subscribe(topics.status("pi-9"))

    def asks() -> list[Holdings]:
        return [h for p in watcher.got(topics.status("pi-9"))
                if (h := StatusMessage.from_bytes(p).holds) is not None]

    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert wait_until(asks, "the agent's ask") == [Holdings()]
        forged = _pubkey(keypair[0], Signer.from_seed(b"forger"))
        watcher.publish(topics.pubkey, forged)  # live, not retained
        genuine = _pubkey(keypair[0], AGGREGATOR_SIGNER)
        watcher.publish(topics.pubkey, genuine)
        wait_until(lambda: agent._aggregator_key is not None, "the agent to trust the key")
        assert agent._aggregator_key == AGGREGATOR_SIGNER.public_key
        assert wait_until(lambda: asks()[1:], "the ask after the key") == [
            Holdings.of(genuine, None)]
    finally:
        agent.stop()
        thread.join(5)
        watcher.close()
