"""``fedmq bench-flower``: the same federated task in Flower (plaintext FedAvg over gRPC)
and in fedmq (Paillier-encrypted FedAvg over MQTT), one after the other on this machine.

Same synthetic fleet and non-IID split (fedmq.synthetic, one CSV per client, loaded as a
fedmq agent loads it), same model and local SGD (models.make_model with the same
epochs, batch size, learning rate and seed), same zero start, same rounds. Flower runs
as a server process and a clients process (one thread and one gRPC connection per
client) with the Python of a venv that has flwr: flwr pins typer < 0.21 and amqtt needs
typer >= 0.24, so they cannot share one (``make .venv-flower/.installed`` makes it).

Measured per round, steady state (rounds 2..R; round 1 also pays start-up):
round time (Flower: configure_fit to aggregate_fit; fedmq: round opened to closed),
bytes on the wire (Flower: every TCP byte between clients and server, through a
counting relay; fedmq: MQTT PUBLISH + PUBACK bytes into and out of the broker,
computed from the payload sizes the aggregator counts), CPU per client (Flower: the
clients process; fedmq: the agents' threads, their obfuscator and MQTT threads), and
the final model's accuracy on the pooled held-out rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.flower_task import Task, test_score, write_fleet
from benchmarks.wire import CountingProxy, free_port, mean, process_cpu
from protocol.errors import ConfigError

if TYPE_CHECKING:  # the fedmq side imports the gateway (amqtt): only when it runs
    from benchmarks.flower_fedmq import FedmqResult

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv-flower" / "bin" / "python"


def flower_python(given: str | None = None) -> str | None:
    """A Python that imports flwr: --flower-python, this one, or .venv-flower's."""
    candidates = [given] if given else [sys.executable, str(VENV_PYTHON)]
    for py in candidates:
        if py and Path(py).exists() and subprocess.run(
                [py, "-c", "import flwr"], capture_output=True, env=_env()).returncode == 0:
            return py
    if given:
        raise ConfigError(f"--flower-python {given}: no such Python, or it cannot import flwr")
    return None


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


@dataclass
class FlowerRound:
    round_id: int
    seconds: float
    wire_bytes: int
    payload_bytes: int
    client_cpu: float  # the clients process, since the previous round closed
    server_cpu: float


@dataclass
class FlowerResult:
    rounds: list[FlowerRound]
    final_params: np.ndarray
    accuracy: float
    version: str


def run_flower(task: Task, python: str, work: Path, *, timeout: float = 600.0) -> FlowerResult:
    paths = [str(p) for p in write_fleet(task, work / "data")]
    port = free_port()
    server = subprocess.Popen(
        [python, "-m", "benchmarks.flower_side", "server", str(port), task.to_json()],
        stdout=subprocess.PIPE, stderr=(work / "server.log").open("wb"), text=True, env=_env())
    proxy = CountingProxy(port)
    with (work / "clients.log").open("wb") as log:
        clients = subprocess.Popen(
            [python, "-m", "benchmarks.flower_side", "clients", f"127.0.0.1:{proxy.port}",
             task.to_json(), *paths], stdout=log, stderr=subprocess.STDOUT, env=_env())
    rounds: list[FlowerRound] = []
    last = (0, process_cpu(clients.pid), process_cpu(server.pid))
    params: list[float] = []
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(server, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if clients.poll() not in (None, 0):  # the server would wait for them forever
                    break
                continue
            if line is None:  # the server is done
                break
            if not line.startswith("{"):
                continue
            got = json.loads(line)
            now = (proxy.total, process_cpu(clients.pid), process_cpu(server.pid))
            rounds.append(FlowerRound(
                got["round"], got["seconds"], now[0] - last[0],
                got["update_payload_bytes"] + got["model_payload_bytes"],
                now[1] - last[1], now[2] - last[2]))
            last, params = now, got["params"]
        if len(rounds) == task.rounds:
            clients.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in (server, clients):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        proxy.close()
    if len(rounds) != task.rounds:
        raise ConfigError(f"Flower finished {len(rounds)} of {task.rounds} rounds; see "
                          f"{work / 'server.log'} and {work / 'clients.log'}")
    version = subprocess.run([python, "-c", "import flwr; print(flwr.__version__)"],
                             capture_output=True, text=True, env=_env()).stdout.strip()
    final = np.asarray(params, dtype=np.float64)
    return FlowerResult(rounds, final, test_score(task, final), version)


def _read_lines(proc: subprocess.Popen[str], sink: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        sink.put(line)
    sink.put(None)


def steady(rounds: list[FlowerRound] | list[object]) -> slice:
    return slice(1, None) if len(rounds) > 1 else slice(0, None)


def table(task: Task, key_bits: int, fl: FlowerResult, fm: FedmqResult) -> list[str]:
    s = steady(fl.rounds)
    n = task.clients
    f_rounds, m_rounds = fl.rounds[s], fm.rounds[s]
    rows = [
        ("round time (s)", mean([r.seconds for r in m_rounds]),
         mean([r.seconds for r in f_rounds]), ".3f"),
        ("bytes per round (wire)", mean([r.wire_bytes for r in m_rounds]),
         mean([r.wire_bytes for r in f_rounds]), ",.0f"),
        ("  of which payload", mean([r.payload_bytes for r in m_rounds]),
         mean([r.payload_bytes for r in f_rounds]), ",.0f"),
        ("CPU per client per round (s)",
         mean([sum(r.cpu[k] for k in ("agents", "obfuscators", "agents-mqtt")) / n
               for r in m_rounds]),
         mean([r.client_cpu / n for r in f_rounds]), ".4f"),
        ("server-side CPU per round (s)",
         mean([r.cpu["broker"] + r.cpu["aggregator"] for r in m_rounds]),
         mean([r.server_cpu for r in f_rounds]), ".3f"),
        ("final accuracy", fm.accuracy, fl.accuracy, ".4f"),
    ]
    which = f"rounds {s.start + 1}..{task.rounds}" if s.start else "round 1"
    out = [f"{n} clients x {task.rounds} rounds, {task.samples_per_device} rows per client "
           f"({'IID' if task.iid else 'non-IID'}), fedmq {key_bits}-bit Paillier over MQTT "
           f"vs Flower {fl.version} FedAvg over gRPC (means over {which})",
           f"{'':32}{'fedmq':>14}{'Flower':>14}{'fedmq/Flower':>14}"]
    for name, a, b, fmt in rows:
        ratio = a / b if b else float("nan")
        out.append(f"{name:32}{a:>14{fmt}}{b:>14{fmt}}{ratio:>14.2f}")
    diff = float(np.max(np.abs(fm.final_params - fl.final_params)))
    out.append(f"final parameters differ by at most {diff:.2e} (fedmq quantizes and clips)")
    return out + breakdown(fm, n, s)


def breakdown(fm: FedmqResult, n: int, s: slice) -> list[str]:
    """Where fedmq's round time goes (CPU seconds per round, all on 2 shared cores)."""
    rounds = fm.rounds[s]
    compute = mean([sum(r.compute_ms) / 1000 for r in rounds])
    encrypt = mean([sum(r.encrypt_ms) / 1000 for r in rounds])
    decrypt = mean([r.decrypt_seconds for r in rounds])
    lines = ["fedmq per round, summed over clients; wall times overlap (agents are threads of "
             "one process, waiting for the GIL counts), CPU times do not:",
             f"  training + evaluation sums (wall)     {compute:8.3f} s  "
             f"({1000 * compute / n:.1f} ms per client)",
             f"  encode + encrypt + sign (wall)        {encrypt:8.3f} s  "
             f"({1000 * encrypt / n:.1f} ms per client)",
             f"  decrypt (aggregator, wall)            {decrypt:8.3f} s"]
    for role, what in (("obfuscators", "obfuscator precompute CPU"),
                       ("agents-mqtt", "agents' MQTT threads CPU"),
                       ("agents", "agents' round threads CPU (train, sign)"),
                       ("broker", "broker CPU"),
                       ("aggregator", "aggregator CPU (verify, add, decrypt)")):
        lines.append(f"  {what:38}{mean([r.cpu[role] for r in rounds]):8.3f} s")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--key-bits", type=int, default=2048, help="fedmq's Paillier key size")
    p.add_argument("--samples", type=int, default=400, help="rows per client")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flower-python", default=None,
                   help="a Python with flwr (default: this one, else .venv-flower/bin/python)")
    p.add_argument("--keep", default=None, help="keep the work files (data, logs) here")


def cmd_bench_flower(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.rounds < 1 or args.key_bits < 512:
        raise ConfigError("bench-flower needs --clients >= 1, --rounds >= 1, --key-bits >= 512")
    if getattr(args, "verbose", 0) == 0:  # the table is the output, as in fedmq simulate
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("amqtt").setLevel(logging.ERROR)
    python = flower_python(args.flower_python)
    if python is None:
        raise ConfigError("bench-flower: no Python with flwr found; make .venv-flower/.installed "
                          "(a venv of its own: flwr and amqtt pin incompatible typer versions)")
    task = Task(clients=args.clients, rounds=args.rounds, samples_per_device=args.samples,
                seed=args.seed)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-flower-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"Flower: {task.clients} clients x {task.rounds} rounds ...", flush=True)
        fl = run_flower(task, python, work / "flower")
        print(f"fedmq: {task.clients} agents x {task.rounds} rounds, {args.key_bits}-bit keys "
              "...", flush=True)
        from benchmarks.flower_fedmq import run_fedmq

        fm = run_fedmq(task, key_bits=args.key_bits,
                       out_dir=str(work / "fedmq") if args.keep else None)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(table(task, args.key_bits, fl, fm)))
    return 0


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("bench-flower", help=help_text,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_flower)
