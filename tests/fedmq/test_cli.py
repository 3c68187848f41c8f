from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support import AGGREGATOR_SIGNER, signer_for, spec_toml

from fedmq.broker.embedded import free_port
from fedmq.cli import main

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedmq", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


@pytest.mark.parametrize("cmd", [[], ["broker"], ["aggregator"], ["agent"], ["simulate"],
                                 ["sample-data"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: fedmq" in capsys.readouterr().out


def test_help_as_a_real_process():
    proc = run("--help")
    assert proc.returncode == 0
    for sub in ("broker", "aggregator", "agent", "simulate"):
        assert sub in proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fedmq: error:")]
    assert len(errors) == 1 and match in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file():
    one_line_error(run("aggregator", "--config", "/nonexistent.toml"), "not found")


def test_bad_config(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'x y'\n[data]\npath='d'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "invalid agent id")


def test_missing_data_file(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'pi'\n[data]\npath='nope.csv'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "nope.csv not found")


def test_unreachable_broker(tmp_path):
    (tmp_path / "d.csv").write_text("a,l\n1,0\n")
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[agent]\nid = 'pi'\nstate_dir = 'st'\n[mqtt]\nport = {free_port()}\n"
                   "connect_attempts = 1\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "cannot reach MQTT broker")


def test_agent_without_a_place_for_its_signing_key(tmp_path):
    (tmp_path / "d.csv").write_text("a,l\n1,0\n")
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'pi'\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "signing key")


def test_enroll_flow_device_key_to_gateway_allow_list(tmp_path):
    """Device prints its public key; the gateway enrolls it and prints what to pin."""
    (tmp_path / "d.csv").write_text("a,l\n1,0\n")
    agent_cfg = tmp_path / "a.toml"
    agent_cfg.write_text("[agent]\nid = 'pi-7'\nstate_dir = 'st'\n"
                         "[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    shown = run("agent", "--config", str(agent_cfg), "--show-public-key")
    assert shown.returncode == 0, shown.stderr
    public_hex = shown.stdout.strip()
    assert len(public_hex) == 64
    key_file = tmp_path / "st" / "signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert run("agent", "--config", str(agent_cfg), "--show-public-key").stdout.strip() == \
        public_hex  # created once, then reused

    agg_cfg = tmp_path / "g.toml"
    agg_cfg.write_text("[keys]\nbits = 512\nprivate_key_file='gw/p.key'\n"
                       "signing_key_file='gw/s.key'\nallow_list_file='gw/allow.json'\n"
                       "[model]\nkind='logistic'\nfeatures=['a']\nn_classes=2\n")
    out = run("enroll", "--config", str(agg_cfg), "--agent", "pi-7", "--public-key", public_hex)
    assert out.returncode == 0, out.stderr
    assert "key_fingerprint = " in out.stdout and "aggregator_signing_key = " in out.stdout
    allow = json.loads((tmp_path / "gw" / "allow.json").read_text())
    assert allow["agents"] == {"pi-7": public_hex}
    one_line_error(run("enroll", "--config", str(agg_cfg), "--agent", "pi-8",
                       "--public-key", "zz"), "Ed25519")
    gone = run("enroll", "--config", str(agg_cfg), "--agent", "pi-7", "--revoke")
    assert gone.returncode == 0 and "revoked" in gone.stdout
    assert json.loads((tmp_path / "gw" / "allow.json").read_text())["agents"] == {}


def test_sample_data(tmp_path):
    proc = run("sample-data", "--devices", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-000.csv", "dev-001.csv"]


def test_simulate_bad_option():
    one_line_error(run("simulate", "--agents", "2", "--kill", "2"), "kill")


# --- malformed state and data files: one line naming the file, never a traceback ---------

AS_ROOT = os.geteuid() == 0


def run_without_root_override(*args: str) -> subprocess.CompletedProcess[str]:
    """Like ``run``, but permission bits bind even for root (CAP_DAC_* dropped via setpriv)."""
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if AS_ROOT else []
    return subprocess.run([*prefix, sys.executable, "-m", "fedmq", *args], capture_output=True,
                          text=True, env=ENV, timeout=60)


def gateway(tmp_path, keypair):
    """An aggregator config with its keys in place, pointing at a port nobody listens on."""
    from fedmq.protocol.crypto.paillier import private_key_to_dict

    state = tmp_path / "gw"
    state.mkdir()
    (state / "paillier.key").write_text(json.dumps(private_key_to_dict(keypair[1])))
    (state / "signing.key").write_bytes(AGGREGATOR_SIGNER.to_pem())
    for key in ("paillier.key", "signing.key"):
        (state / key).chmod(0o600)
    cfg = tmp_path / "g.toml"
    cfg.write_text(f"""
[fleet]
name = "test"
[mqtt]
port = {free_port()}
[keys]
bits = 512
private_key_file = "{state / 'paillier.key'}"
signing_key_file = "{state / 'signing.key'}"
allow_list_file = "{state / 'allow.json'}"
{spec_toml()}[output]
state_dir = "{state}"
""".replace("'", '"'))
    return cfg, state


def identity(state):
    """(key fingerprint, codec digest) of the gateway's key: its run state must match them."""
    from fedmq.protocol.crypto.codec import CodecParams
    from fedmq.protocol.crypto.paillier import fingerprint, private_key_from_dict
    from fedmq.protocol.layout import contract_digest
    from fedmq.protocol.sums.statistics import StatsParams

    fp = fingerprint(private_key_from_dict(
        json.loads((state / "paillier.key").read_text())).public_key)
    return fp, contract_digest(CodecParams(), StatsParams(), fp)


def run_json(state, **fields):
    fp, digest = identity(state)
    doc = {"schema": "fedmq.aggregator-state/1", "run_id": "r1", "fleet": "test",
           "key_fingerprint": fp, "codec_digest": digest, "round_id": 3,
           "model_version": 3, "status": "closed", "expected": [], "sampled": False,
           "opened_at": 1.0, "deadline": 2.0, "extensions": 0}
    return json.dumps({**doc, **fields})


def cur(state):
    """The run directory ``latest`` names: where a run's state files live."""
    return state / "latest"


def _open_round_with(state, make_entry):
    (cur(state) / "run.json").write_text(run_json(state, status="open", model_version=0,
                                                  round_id=1))
    (cur(state) / "open_round").mkdir()
    make_entry(cur(state) / "open_round" / "agent-0.fmqu")


def _closed_run_with(state, name, content):
    (cur(state) / "run.json").write_text(run_json(state))
    (cur(state) / name).write_bytes(content)


def _open_round_file(state):
    (cur(state) / "run.json").write_text(run_json(state, status="open", model_version=0,
                                                  round_id=1))
    (cur(state) / "open_round").write_bytes(b"x")


def _unreadable_fmqu(path):
    path.write_bytes(b"FMQU")
    path.chmod(0)


def _unreadable_dir(state):
    _open_round_with(state, lambda p: p.write_bytes(b"FMQU"))
    (cur(state) / "open_round").chmod(0)


MALFORMED_STATE = {
    # case: (prepare(state), what stderr's one line must name, what it must say)
    "binary paillier.key": (lambda s: (s / "paillier.key").write_bytes(b"\x80\xff\x00\x13"),
                            "paillier.key", "not"),
    "paillier.key holding []": (lambda s: (s / "paillier.key").write_text("[]"),
                                "paillier.key", "not a fedmq Paillier private key"),
    "run.json holding null": (lambda s: (cur(s) / "run.json").write_text("null"), "run.json",
                              "not a"),
    "run.json round_id string": (lambda s: (cur(s) / "run.json").write_text(
        run_json(s, round_id="25")), "run.json", "round_id"),
    "run.json deadline string": (lambda s: (cur(s) / "run.json").write_text(
        run_json(s, deadline="soon")), "run.json", "deadline"),
    "run.json round_id bool": (lambda s: (cur(s) / "run.json").write_text(
        run_json(s, round_id=True)), "run.json", "round_id"),
    "binary run.json": (lambda s: (cur(s) / "run.json").write_bytes(b"\xff\xfe\x00"), "run.json",
                        "cannot resume"),
    "model missing beside run.json": (lambda s: (cur(s) / "run.json").write_text(run_json(s)),
                                      "global_model.npz", "missing"),
    "open_round is a file": (_open_round_file, "open_round", "not a directory"),
    "a .fmqu that is a directory": (lambda s: _open_round_with(s, lambda p: p.mkdir()),
                                    "agent-0.fmqu", "cannot read"),
    "an unreadable .fmqu": (lambda s: _open_round_with(s, _unreadable_fmqu), "agent-0.fmqu",
                            "cannot read"),
    "an unreadable open_round": (_unreadable_dir, "open_round", "cannot read"),
    "a read-only state dir": (lambda s: s.chmod(0o555), "gw", "cannot write"),
    "binary rounds.csv": (lambda s: _closed_run_with(s, "rounds.csv", b"round\x00\xff\n"),
                          "rounds.csv", "cannot read round log"),
    "foreign rounds.csv": (lambda s: _closed_run_with(s, "rounds.csv", b"a,b\n1,2\n"),
                           "rounds.csv", "not a fedmq round log"),
    "paillier.key missing, signing.key kept": (lambda s: (s / "paillier.key").unlink(),
                                               "paillier.key", "--new-keys"),
    "signing.key missing, paillier.key kept": (lambda s: (s / "signing.key").unlink(),
                                               "signing.key", "--new-keys"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_STATE))
def test_malformed_state_files_end_in_one_line(tmp_path, keypair, case):
    prepare, names, says = MALFORMED_STATE[case]
    from fedmq.aggregator.runs import RunDirs

    cfg, state = gateway(tmp_path, keypair)
    RunDirs(state).create("r1")  # the run being resumed
    prepare(state)
    keys_before = sorted(p.name for p in state.iterdir())
    proc = run_without_root_override("aggregator", "--config", str(cfg))
    one_line_error(proc, names)
    assert says in proc.stderr, proc.stderr
    state.chmod(0o755)
    # No key made behind our back (the lock that guards key creation may stay: no key).
    assert sorted(p.name for p in state.iterdir() if not p.name.endswith(".lock")) == \
        keys_before


@pytest.mark.parametrize("content,says", [
    (b"a,l\n\x80\x81\xfe,0\n", "not a UTF-8 text file"),
    (b"a,l\n1\x00,0\n", "NUL"),
    (bytes(range(256)) * 4, "not a UTF-8 text file"),
])
def test_binary_data_file_is_one_line(tmp_path, content, says):
    (tmp_path / "d.csv").write_bytes(content)
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'pi'\nstate_dir = 'st'\n[mqtt]\nport = 1\n"
                   "[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    proc = run("agent", "--config", str(cfg))
    one_line_error(proc, "d.csv")
    assert says in proc.stderr


def test_enroll_does_not_replace_a_lost_signing_key(tmp_path, keypair):
    cfg, state = gateway(tmp_path, keypair)
    (state / "signing.key").unlink()
    proc = run("enroll", "--config", str(cfg), "--agent", "pi-1", "--public-key",
               signer_for("pi-1").public_hex)
    one_line_error(proc, "signing.key")
    assert not (state / "signing.key").exists()
    made = run("enroll", "--config", str(cfg), "--agent", "pi-1", "--public-key",
               signer_for("pi-1").public_hex, "--new-keys")
    assert made.returncode == 0, made.stderr
    assert "re-pin" in made.stderr + made.stdout and (state / "signing.key").exists()


def test_aggregator_new_keys_replaces_only_a_lost_key_and_says_to_re_pin(tmp_path, keypair):
    cfg, state = gateway(tmp_path, keypair)
    old = run("aggregator", "--config", str(cfg), "--show-fingerprint")
    assert old.returncode == 0, old.stderr
    (state / "paillier.key").unlink()
    one_line_error(run("aggregator", "--config", str(cfg), "--show-fingerprint"),
                   "paillier.key is missing")
    new = run("aggregator", "--config", str(cfg), "--show-fingerprint", "--new-keys")
    assert new.returncode == 0, new.stderr
    assert new.stdout.strip() != old.stdout.strip() and "re-pin" in new.stderr
    assert (state / "signing.key").read_bytes() == AGGREGATOR_SIGNER.to_pem()  # kept


def test_broker_on_a_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = tmp_path / "broker.toml"
        cfg.write_text(f"[broker]\nport = {taken.getsockname()[1]}\n")
        done = run("broker", "--config", str(cfg))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("fedmq: error:")]
    assert "address already in use" in done.stderr


def test_an_aggregator_stopped_before_the_broker_answers_does_not_claim_its_rounds(
        tmp_path, keypair):
    """It used to log "all 10 rounds done; final model in ..." after a SIGTERM while it
    was still waiting for the broker."""
    import signal
    import time

    cfg, _state = gateway(tmp_path, keypair)
    proc = subprocess.Popen([sys.executable, "-m", "fedmq", "aggregator", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        seen = ""
        assert proc.stderr is not None
        while "refused the connection" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert "stopped before the broker answered" in seen + err
    assert "rounds done" not in seen + err
