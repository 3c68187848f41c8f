"""Flood benchmark: the aggregator's memory and round times while an agent floods it.

``python -m fedmq.benchmarks.flood [--seconds 60] [--agents 3]``. Everything is a real
process on 127.0.0.1: the embedded broker with logins and the topic ACL (its
payload cap raised so 4 MiB payloads pass, as the attacker's broker allowed),
the aggregator (``fedmq aggregator``), honest agents (``fedmq agent``) and one
logged-in, enrolled agent flooding 4 MiB payloads that pass the header checks
(``benchmarks.flooder``). The same fleet first runs as long without the flood:
the baseline. Prints the aggregator's peak RSS (VmHWM from /proc) and the round
times of both phases, against the round deadline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmq.aggregator.allowlist import enroll
from fedmq.broker.acl import FleetAcl
from fedmq.broker.embedded import free_port
from fedmq.broker.mosquitto import MosquittoSetup, read_credentials, write_files
from fedmq.protocol.crypto.paillier import fingerprint, generate_keypair, private_key_to_dict
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.topics import Topics
from fedmq.runtime.files import create_signer

FEATURES = ("x1", "x2", "x3")
FLEET = "bench"
FLOODER = "flooder"
MIB = 1024 * 1024


@dataclass(frozen=True)
class FloodOptions:
    seconds: float = 60.0  # flood (and baseline) duration
    agents: int = 3
    round_timeout: float = 10.0
    payload_bytes: int = 4 * MIB
    key_bits: int = 2048
    drain_seconds: float = 0.25
    broker: str = "embedded"  # or "mosquitto": the generated config, /usr/sbin/mosquitto

    def __post_init__(self) -> None:
        if self.broker not in ("embedded", "mosquitto"):
            raise ValueError("broker must be 'embedded' or 'mosquitto'")
        if self.seconds <= 0 or self.agents < 1 or self.round_timeout <= 0:
            raise ValueError("flood needs seconds > 0, agents >= 1, round_timeout > 0")


@dataclass
class Phase:
    name: str
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    broker_rss_peak_mb: float = 0.0  # the broker's own peak (its queues)
    rounds: list[dict[str, str]] = field(default_factory=list)  # rounds.csv rows in the window
    sent: int = 0  # flood payloads the broker took

    @property
    def round_seconds(self) -> list[float]:
        return [float(r["seconds"]) for r in self.rounds]


def _pw(user: str) -> str:
    return f"{user}-bench-password"


def _rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready: object, what: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Gateway:
    """Writes every file a fleet needs in ``root`` and starts its processes."""

    def __init__(self, root: Path, options: FloodOptions) -> None:
        self.root, self.options = root, options
        self.agent_ids = [f"dev-{i}" for i in range(options.agents)]
        public, private = generate_keypair(options.key_bits)
        self.n_hex = format(public.n, "x")
        self.fingerprint = fingerprint(public)
        (root / "paillier.key").write_text(json.dumps(private_key_to_dict(private)))
        (root / "paillier.key").chmod(0o600)
        # Both aggregator keys exist before it starts: it creates keys only on a first
        # start, and the second phase is not one.
        create_signer(root / "signing.key")
        from pwdlib.hashers.argon2 import Argon2Hasher  # the broker's own dependency

        hasher = Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1)
        users = ["aggregator", *self.agent_ids, FLOODER]
        (root / "passwords.txt").write_text(
            "".join(f"{u}:{hasher.hash(_pw(u))}\n" for u in users))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.passwords: dict[str, str] = {}

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        with (self.root / log).open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self, phase: str) -> tuple[int, subprocess.Popen[bytes], Path]:
        """Broker, aggregator and agents for one phase; returns (port, aggregator, state dir)."""
        port, state = free_port(), self.root / phase
        state.mkdir()
        self._start_broker(port, state)
        _wait(lambda: _listening(port), "the broker", 30)
        for agent_id in [*self.agent_ids, FLOODER]:
            enroll(state / "allow.json", agent_id, Signer.from_seed(agent_id.encode()).public_hex)
        aggregator = self._spawn(["fedmq", "aggregator", "--config",
                                  str(self._aggregator_toml(port, state))], f"{phase}-agg.log")
        for i, agent_id in enumerate(self.agent_ids):
            self._spawn(["fedmq", "agent", "--config", str(self._agent_toml(port, state, i))],
                        f"{phase}-{agent_id}.log")
        return port, aggregator, state

    def _start_broker(self, port: int, state: Path) -> None:
        cap = self.options.payload_bytes + MIB
        if self.options.broker == "embedded":
            (state / "broker.toml").write_text(
                f'[broker]\nhost = "127.0.0.1"\nport = {port}\n'
                f'password_file = "{self.root / "passwords.txt"}"\nallow_anonymous = false\n'
                f'acl = true\nfleet = "{FLEET}"\nmax_payload_bytes = {cap}\n')
            self._spawn(["fedmq", "broker", "--config", str(state / "broker.toml")],
                        "broker.log")
            return
        written = write_files(state / "mosquitto", MosquittoSetup(
            FleetAcl(Topics(FLEET), ("aggregator",), (*self.agent_ids, FLOODER)),
            host="127.0.0.1", port=port, max_payload_bytes=cap))
        self.passwords = read_credentials(written.credentials)
        if os.geteuid() == 0:  # as root Mosquitto would switch to a user that cannot read
            with written.conf.open("a") as fh:
                fh.write("user root\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with (self.root / "broker.log").open("ab") as out:
            self.procs.append(subprocess.Popen([binary, "-c", str(written.conf)], stdout=out,
                                               stderr=subprocess.STDOUT))

    def password(self, user: str) -> str:
        return self.passwords.get(user) or _pw(user)

    def _aggregator_toml(self, port: int, state: Path) -> Path:
        o, path = self.options, state / "aggregator.toml"
        path.write_text(f"""
[fleet]
name = "{FLEET}"
[mqtt]
port = {port}
username = "aggregator"
password = "{self.password('aggregator')}"
[keys]
private_key_file = "{self.root / 'paillier.key'}"
bits = {o.key_bits}
signing_key_file = "{self.root / 'signing.key'}"
allow_list_file = "{state / 'allow.json'}"
[rounds]
rounds = 100000
round_timeout = {o.round_timeout}
quorum = {o.agents}
min_agents = {o.agents}
start_timeout = 120
max_extensions = 3
[limits]
drain_seconds = {o.drain_seconds}
[model]
kind = "logistic"
features = {json.dumps(list(FEATURES))}
n_classes = 2
center = [0.0, 0.0, 0.0]
scale = [1.0, 1.0, 1.0]
[training]
epochs = 1
batch_size = 16
learning_rate = 0.1
[output]
state_dir = "{state}"
""")
        return path

    def _agent_toml(self, port: int, state: Path, seed: int) -> Path:
        agent_id = self.agent_ids[seed]
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(60, len(FEATURES)))
        y = (X @ np.array([1.5, -0.7, 2.0]) + rng.normal(scale=0.5, size=60) > 0)
        np.savetxt(state / f"{agent_id}.csv", np.column_stack([X, y]), delimiter=",",
                   header=",".join((*FEATURES, "y")), comments="")
        key = state / f"{agent_id}.key"
        key.write_bytes(Signer.from_seed(agent_id.encode()).to_pem())
        key.chmod(0o600)
        path = state / f"{agent_id}.toml"
        path.write_text(f"""
[agent]
id = "{agent_id}"
signing_key_file = "{key}"
state_dir = "{state / agent_id}"
[fleet]
name = "{FLEET}"
key_fingerprint = "{self.fingerprint}"
[mqtt]
port = {port}
username = "{agent_id}"
password = "{self.password(agent_id)}"
[data]
path = "{state / f'{agent_id}.csv'}"
features = {json.dumps(list(FEATURES))}
label = "y"
""")
        return path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def _rows(state: Path) -> list[dict[str, str]]:
    path = state / "latest" / "rounds.csv"  # the current run's directory
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def run_phase(gateway: Gateway, name: str, *, flood: bool) -> Phase:
    """One fleet for ``options.seconds`` after its first round, flooded or not."""
    o, phase = gateway.options, Phase(name)
    port, aggregator, state = gateway.start(name)
    try:
        _wait(lambda: len(_rows(state)) >= 1 or aggregator.poll() is not None,
              "the first round", 120)
        if aggregator.poll() is not None:
            raise RuntimeError(f"the aggregator exited: see {gateway.root / (name + '-agg.log')}")
        phase.rss_start_mb = _rss_mb(aggregator.pid)
        broker = gateway.procs[0]
        before = len(_rows(state))
        flooder = None
        if flood:
            flooder = gateway._spawn(
                ["fedmq.benchmarks.flooder", str(port), FLOODER, gateway.password(FLOODER), FLOODER,
                 gateway.n_hex, str(o.payload_bytes), str(o.seconds)], f"{name}-flooder.log")
        end = time.monotonic() + o.seconds
        while time.monotonic() < end and aggregator.poll() is None:
            phase.rss_peak_mb = max(phase.rss_peak_mb, _rss_mb(aggregator.pid))
            time.sleep(0.1)
        # Let the round that was open when the flood ended close (deadline + one drain).
        last = len(_rows(state))
        _wait(lambda: len(_rows(state)) > last or aggregator.poll() is not None,
              "the round open at the end of the flood", o.round_timeout * 5 + 10)
        if aggregator.poll() is None:
            phase.rss_peak_mb = max(phase.rss_peak_mb, _rss_mb(aggregator.pid, "VmHWM"))
        if broker.poll() is None:
            phase.broker_rss_peak_mb = _rss_mb(broker.pid, "VmHWM")
        phase.rounds = _rows(state)[before:]
        if flooder is not None:
            flooder.wait(30)
            phase.sent = int((gateway.root / f"{name}-flooder.log").read_text().split()[-1])
    finally:
        gateway.stop()
    return phase


def run(options: FloodOptions, root: Path | None = None) -> tuple[Phase, Phase]:
    """(baseline, flood) phases, each on a fresh broker and fleet under ``root``."""
    root = root or Path(tempfile.mkdtemp(prefix="fedmq-flood-"))
    gateway = Gateway(root, options)
    return run_phase(gateway, "baseline", flood=False), run_phase(gateway, "flood", flood=True)


def report(options: FloodOptions, phases: tuple[Phase, Phase]) -> str:
    lines = [f"flood benchmark: {options.agents} agents, {options.seconds:g} s per phase, "
             f"{options.payload_bytes // MIB} MiB payloads, deadline {options.round_timeout:g} s"]
    for p in phases:
        secs = p.round_seconds or [float("nan")]
        lines.append(f"{p.name:9s} aggregator rss start {p.rss_start_mb:6.1f} MB  peak "
                     f"{p.rss_peak_mb:6.1f} MB  broker peak {p.broker_rss_peak_mb:7.1f} "
                     f"MB  rounds {len(p.rounds):3d}  round s median {np.median(secs):6.2f} "
                     f"max {max(secs):6.2f}  flood payloads sent {p.sent}")
    base, flood = phases
    if base.round_seconds and flood.round_seconds and base.rss_peak_mb:
        worst = max(flood.round_seconds)
        slower = np.median(flood.round_seconds) / np.median(base.round_seconds)
        verdict = "within" if worst <= options.round_timeout else "OVER"
        lines.append(f"flood / baseline: peak RSS x{flood.rss_peak_mb / base.rss_peak_mb:.2f}, "
                     f"median round x{slower:.1f}; longest flooded round {worst:.2f} s of a "
                     f"{options.round_timeout:g} s deadline ({verdict})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m fedmq.benchmarks.flood`` and ``fedmq bench-flood``."""
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--agents", type=int, default=3, help="honest agents")
    parser.add_argument("--bits", type=int, default=2048, help="Paillier key size")
    parser.add_argument("--round-timeout", type=float, default=10.0, help="round deadline, s")
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded")


def run_from_args(args: argparse.Namespace) -> int:
    options = FloodOptions(seconds=args.seconds, agents=args.agents, key_bits=args.bits,
                           round_timeout=args.round_timeout, broker=args.broker)
    print(report(options, run(options)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmq.benchmarks.flood", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-flood", help=help_text, description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
