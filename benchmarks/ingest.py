"""Ingestion benchmark: one agent storing a sensor stream while training rounds run.

``fedmq bench-ingest [--rate 100] [--seconds 60] [--key-bits 2048]``. Every part is a
real process on 127.0.0.1: the embedded broker (``fedmq broker``), the aggregator
(``fedmq aggregator``), a CSV agent (the baseline) and a stream agent (``[data] source =
"mqtt"``), both ``fedmq agent``. A publisher here sends ``--rate`` JSON readings per
second (QoS 1) to the stream agent's local topic for ``--seconds`` while the fleet of the
two trains round after round. Prints both agents' peak RSS (VmHWM) against the device
budget of 60 MB and their ratio, split into the agent's own (anonymous) memory and the
file-backed pages of its shared libraries, the readings per second sustained, and whether
the rows stored equal the readings published.

The file-backed part depends on how the machine's page cache holds the libraries, not on
the agent: the same numpy extension mapped 6.0 MB from a venv whose files were written
in large page-cache folios (a copied or freshly built venv) and 2.7 MB once its pages had
been read back the way a booted device reads them (page faults, readahead). So before the
agents start, the benchmark drops the page cache of the device's compiled libraries
(``posix_fadvise(DONTNEED)``: clean pages only, nothing another process has mapped) and
the agents map them the way a device does after boot. The agents also load fedmq's
bytecode written beforehand, as from a device install, instead of compiling the source.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmq.aggregator.allowlist import enroll
from fedmq.broker.embedded import free_port
from fedmq.protocol.crypto.paillier import fingerprint, generate_keypair, private_key_to_dict
from fedmq.protocol.crypto.signing import Signer
from fedmq.runtime.files import create_signer
from fedmq.runtime.transport import MqttLink, MqttSettings
from fedmq.simulation.stream import stored_rows

BUDGET_MB = 60.0  # an agent's RSS budget on a Pi (docs/deployment.md)
FLEET = "ingest"
FEATURES = ("x1", "x2", "x3")
TOPIC = "local/dev-stream/reading"
# The device install's compiled libraries (docs/deployment.md); paho and phe are pure Python.
DEVICE_LIBRARIES = ("numpy", "cryptography", "gmpy2", "msgspec", "_cffi_backend")


@dataclass
class IngestResult:
    csv_rss_mb: float
    stream_rss_mb: float
    published: int
    stored: int
    seconds: float
    rounds: int
    csv_anon_mb: float = 0.0  # peak anonymous memory: the agent's own heap, stacks, arenas
    stream_anon_mb: float = 0.0
    csv_file_mb: float = 0.0  # peak file-backed pages: shared libraries, mostly
    stream_file_mb: float = 0.0

    @property
    def ratio(self) -> float:
        return self.stream_rss_mb / self.csv_rss_mb if self.csv_rss_mb else float("nan")


def _rss_mb(pid: int, field_name: str = "VmHWM") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    """Samples processes' RssAnon and RssFile (VmHWM holds only their sum's peak)."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.anon: dict[str, float] = {}
        self.file: dict[str, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def _run(self) -> None:
        while not self._done.wait(0.1):
            for name, pid in list(self.pids.items()):
                anon, file = _rss_mb(pid, "RssAnon"), _rss_mb(pid, "RssFile")
                self.anon[name] = max(self.anon.get(name, 0.0), anon)
                self.file[name] = max(self.file.get(name, 0.0), file)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)


def cold_libraries(packages: tuple[str, ...] = DEVICE_LIBRARIES) -> int:
    """Drop the page cache of ``packages``' compiled libraries; the files dropped.

    Pages that a running process maps stay cached (the kernel keeps them): the agents then
    map what they share with other processes as those laid it out, the rest the way a
    booted device does. A no-op where ``posix_fadvise`` is missing (macOS).
    """
    if not hasattr(os, "posix_fadvise"):
        return 0
    dropped = 0
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        top = origin.parent if spec.submodule_search_locations else origin
        places = [top, top.parent / f"{name}.libs"]
        files = [p for place in places if place.is_dir() for p in place.rglob("*.so*")]
        for path in files or [top]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += 1
            finally:
                os.close(fd)
    return dropped


def _wait(ready: object, what: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _rounds(state: Path) -> int:
    path = state / "latest" / "rounds.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


class Fleet:
    def __init__(self, root: Path, key_bits: int) -> None:
        self.root = root
        self.port = free_port()
        public, private = generate_keypair(key_bits)
        self.fingerprint = fingerprint(public)
        (root / "paillier.key").write_text(json.dumps(private_key_to_dict(private)))
        (root / "paillier.key").chmod(0o600)
        create_signer(root / "signing.key")
        self.key_bits = key_bits
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        # Bytecode as a device has it (pip compiles at install), in the run's directory:
        # a source checkout without it compiles every module at start (~0.5 MB of peak).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
               "PYTHONPYCACHEPREFIX": str(self.root / "pycache")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def compile_agent(self) -> None:
        """Write the agent's bytecode once, before any agent starts."""
        subprocess.run([sys.executable, "-c", "import fedmq.cli, fedmq.edge_agent.agent, "
                        "fedmq.edge_agent.readings_store"], env=self.env(), check=True,
                       timeout=120)

    def spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        env = self.env()
        with (self.root / log).open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "fedmq", *args], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def broker(self) -> None:
        (self.root / "broker.toml").write_text(f'[broker]\nhost = "127.0.0.1"\n'
                                              f'port = {self.port}\n')
        self.spawn(["broker", "--config", str(self.root / "broker.toml")], "broker.log")

    def agent(self, agent_id: str, data: str) -> subprocess.Popen[bytes]:
        key = self.root / f"{agent_id}.key"
        signer = Signer.from_seed(agent_id.encode())
        key.write_bytes(signer.to_pem())
        key.chmod(0o600)
        enroll(self.root / "allow.json", agent_id, signer.public_hex)
        path = self.root / f"{agent_id}.toml"
        path.write_text(f"""
[agent]
id = "{agent_id}"
signing_key_file = "{key}"
state_dir = "{self.root / agent_id}"
exit_when_finished = false
[fleet]
name = "{FLEET}"
key_fingerprint = "{self.fingerprint}"
[mqtt]
port = {self.port}
{data}
""")
        return self.spawn(["agent", "--config", str(path)], f"{agent_id}.log")

    def aggregator(self) -> subprocess.Popen[bytes]:
        path = self.root / "aggregator.toml"
        path.write_text(f"""
[fleet]
name = "{FLEET}"
[mqtt]
port = {self.port}
[keys]
private_key_file = "{self.root / 'paillier.key'}"
bits = {self.key_bits}
signing_key_file = "{self.root / 'signing.key'}"
allow_list_file = "{self.root / 'allow.json'}"
[rounds]
rounds = 100000
round_timeout = 30
quorum = 2
min_agents = 2
start_timeout = 120
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
state_dir = "{self.root / 'gateway'}"
""")
        return self.spawn(["aggregator", "--config", str(path)], "aggregator.log")

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


def _csv_rows(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, len(FEATURES)))
    y = X @ np.array([1.5, -0.7, 2.0]) > 0
    np.savetxt(path, np.column_stack([X, y]), delimiter=",",
               header=",".join((*FEATURES, "y")), comments="")


def run(*, rate: float = 100.0, seconds: float = 60.0, key_bits: int = 2048,
        root: Path | None = None) -> IngestResult:
    with tempfile.TemporaryDirectory(prefix="fedmq-ingest-") as tmp:
        base = root or Path(tmp)
        fleet = Fleet(base, key_bits)
        expected = int(rate * seconds)
        _csv_rows(base / "dev-csv.csv", expected)  # the baseline: as many rows, from a file
        fleet.broker()
        stream_db = base / "dev-stream" / "readings.sqlite3"
        rng = np.random.default_rng(1)
        fleet.compile_agent()
        cold_libraries()
        peaks = PeakMemory()
        link = MqttLink(MqttSettings(port=fleet.port), client_id="bench-sensors",
                        on_message=lambda _t, _p: None)
        try:
            _wait(lambda: _connects(link), "the broker", 30)
            csv_agent = fleet.agent("dev-csv", f"""[data]
path = "{base / 'dev-csv.csv'}"
features = {json.dumps(list(FEATURES))}
label = "y"
""")
            peaks.watch("csv", csv_agent.pid)
            stream_agent = fleet.agent("dev-stream", f"""[local]
port = {fleet.port}
[data]
source = "mqtt"
features = {json.dumps(list(FEATURES))}
label = "y"
[data.stream]
keep_rows = {max(expected, 1000)}
[[data.stream.topics]]
topic = "{TOPIC}"
fields = {{ x1 = "$.x[0]", x2 = "$.x[1]", x3 = "$.x[2]", y = "$.fault" }}
""")
            peaks.watch("stream", stream_agent.pid)
            _wait(lambda: "connected to" in (base / "dev-stream.log").read_text()
                  .split("local samples", 1)[-1], "the stream agent", 60)
            time.sleep(1.0)
            published, start, aggregator = 0, time.monotonic(), None
            while (elapsed := time.monotonic() - start) < seconds:
                x = rng.normal(size=3)
                doc = {"x": [round(float(v), 6) for v in x], "fault": bool(x[0] * 1.5 > 0),
                       "ts": time.time()}
                link.publish(TOPIC, json.dumps(doc).encode(), wait=False)
                published += 1
                if aggregator is None and stored_rows(stream_db) >= 50:
                    aggregator = fleet.aggregator()  # rounds run while the stream goes on
                lag = start + published / rate - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
            ingest_seconds = elapsed
            _wait(lambda: stored_rows(stream_db) >= published, "every reading stored", 60)
            peaks.stop()
            result = IngestResult(
                csv_rss_mb=_rss_mb(csv_agent.pid), stream_rss_mb=_rss_mb(stream_agent.pid),
                published=published, stored=stored_rows(stream_db), seconds=ingest_seconds,
                rounds=_rounds(base / "gateway"),
                csv_anon_mb=peaks.anon.get("csv", 0.0),
                stream_anon_mb=peaks.anon.get("stream", 0.0),
                csv_file_mb=peaks.file.get("csv", 0.0),
                stream_file_mb=peaks.file.get("stream", 0.0))
        finally:
            peaks.stop()
            link.close()
            fleet.stop()
    return result


def _connects(link: MqttLink) -> bool:
    try:
        link.connect()
    except Exception:
        return False
    return True


def report(result: IngestResult, rate: float) -> str:
    ok = "yes" if result.stored == result.published else "NO"
    return "\n".join([
        f"ingestion: {result.published} readings published at {rate:g}/s over "
        f"{result.seconds:.0f} s ({result.published / result.seconds:.1f}/s sustained), "
        f"{result.rounds} training rounds meanwhile",
        f"rows stored == rows published: {ok} ({result.stored} of {result.published})",
        "| agent | peak RSS (VmHWM) | anonymous (peak) | file-backed (peak) | budget |",
        "|---|---|---|---|---|",
        f"| CSV agent (baseline) | {result.csv_rss_mb:.1f} MB | {result.csv_anon_mb:.1f} MB "
        f"| {result.csv_file_mb:.1f} MB | {BUDGET_MB:.0f} MB |",
        f"| stream agent ({rate:g} readings/s) | {result.stream_rss_mb:.1f} MB | "
        f"{result.stream_anon_mb:.1f} MB | {result.stream_file_mb:.1f} MB | "
        f"{BUDGET_MB:.0f} MB |",
        f"stream / CSV: {result.ratio:.2f}x"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=100.0, help="readings per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of ingestion")
    parser.add_argument("--key-bits", type=int, default=2048, help="Paillier key size")


def run_from_args(args: argparse.Namespace) -> int:
    result = run(rate=args.rate, seconds=args.seconds, key_bits=args.key_bits)
    print(report(result, args.rate))
    within = result.stream_rss_mb <= BUDGET_MB and result.stored == result.published
    return 0 if within else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmq.benchmarks.ingest",
                                     description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-ingest", help=help_text, description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
