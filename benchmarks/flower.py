"""``fedmq bench-flower``: the same federated task in Flower (plaintext FedAvg over gRPC)
and in fedmq (Paillier-encrypted FedAvg over MQTT), one after the other on this machine.

Same synthetic fleet and non-IID split (fedmq.simulation.synthetic, one CSV per client, loaded as a
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmq.benchmarks.flower_task import Task, test_score, write_fleet
from fedmq.benchmarks.wire import CountingProxy, mean, process_cpu
from fedmq.broker.embedded import free_port, wait_listening
from fedmq.protocol.errors import ConfigError

if TYPE_CHECKING:  # the fedmq side imports the gateway (amqtt): only when it runs
    from fedmq.benchmarks.flower_fedmq import FedmqResult, FedmqRound

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
        [python, "-m", "fedmq.benchmarks.flower_side", "server", str(port), task.to_json()],
        stdout=subprocess.PIPE, stderr=(work / "server.log").open("wb"), text=True, env=_env())
    # The proxy drops a client that connects before the server listens, and a Flower
    # client does not retry: start the clients once the server is up.
    if not wait_listening(port, 60.0, lambda: server.poll() is None):
        ended = server.poll()
        server.kill()
        server.wait()
        why = f"exited with code {ended}" if ended is not None else "did not listen within 60 s"
        raise ConfigError(f"Flower's server {why}; see {work / 'server.log'}")
    proxy = CountingProxy(port)
    with (work / "clients.log").open("wb") as log:
        clients = subprocess.Popen(
            [python, "-m", "fedmq.benchmarks.flower_side", "clients", f"127.0.0.1:{proxy.port}",
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


def _label(fm: FedmqResult) -> str:
    return "fedmq" if fm.workers == 0 else f"fedmq w={fm.workers}"


def table(task: Task, key_bits: int, fl: FlowerResult, fms: list[FedmqResult]) -> list[str]:
    """One column per fedmq layout (``workers``), Flower's, and each fedmq/Flower ratio."""
    s = steady(fl.rounds)
    n = task.clients
    f_rounds = fl.rounds[s]
    client_roles = ("agents", "obfuscators", "agents-mqtt")
    metrics: list[tuple[str, Callable[[list[FedmqRound]], float], float, str]] = [
        ("round time (s)", lambda rs: mean([r.seconds for r in rs]),
         mean([r.seconds for r in f_rounds]), ".3f"),
        ("bytes per round (wire)", lambda rs: mean([r.wire_bytes for r in rs]),
         mean([r.wire_bytes for r in f_rounds]), ",.0f"),
        ("  of which payload", lambda rs: mean([r.payload_bytes for r in rs]),
         mean([r.payload_bytes for r in f_rounds]), ",.0f"),
        ("CPU per client per round (s)",
         lambda rs: mean([sum(r.cpu.get(k, 0.0) for k in client_roles) / n for r in rs]),
         mean([r.client_cpu / n for r in f_rounds]), ".4f"),
        ("server-side CPU per round (s)",
         lambda rs: mean([r.cpu["broker"] + r.cpu["aggregator"] for r in rs]),
         mean([r.server_cpu for r in f_rounds]), ".3f"),
    ]
    which = f"rounds {s.start + 1}..{task.rounds}" if s.start else "round 1"
    labels = [_label(fm) for fm in fms]
    out = [f"{n} clients x {task.rounds} rounds, {task.samples_per_device} rows per client "
           f"({'IID' if task.iid else 'non-IID'}), fedmq {key_bits}-bit Paillier over MQTT "
           f"vs Flower {fl.version} FedAvg over gRPC (means over {which})",
           f"{'':32}" + "".join(f"{x:>13}" for x in [*labels, "Flower"])
           + "".join(f"{x + '/Flower':>19}" for x in labels)]

    def row(name: str, ours: list[float], theirs: float, fmt: str) -> str:
        ratios = [a / theirs if theirs else float("nan") for a in ours]
        return (f"{name:32}" + "".join(f"{a:>13{fmt}}" for a in [*ours, theirs])
                + "".join(f"{r:>19.2f}" for r in ratios))

    for name, of, theirs, fmt in metrics:
        out.append(row(name, [of(fm.rounds[s]) for fm in fms], theirs, fmt))
    out.append(row("final accuracy", [fm.accuracy for fm in fms], fl.accuracy, ".4f"))
    for fm, label in zip(fms, labels, strict=True):
        diff = float(np.max(np.abs(fm.final_params - fl.final_params)))
        out.append(f"{label}: final parameters differ from Flower's by at most {diff:.2e} "
                   "(fedmq quantizes and clips)")
    if any(fm.workers for fm in fms):
        out.append("fedmq: broker, aggregator and agents are threads of one process; fedmq w=N: "
                   "the agents in N worker processes, the broker in its own (Flower: a "
                   "clients process and a server process); CPU per process, 10 ms ticks")
    threads = next((fm for fm in fms if fm.workers == 0), None)
    return out + (breakdown(threads, n, s) if threads is not None else [])


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
    p.add_argument("--fedmq-workers", type=int, nargs="+", default=[0, 1], metavar="N",
                   help="fedmq layouts to run: 0, every role a thread of one process; N, the "
                   "agents in N worker processes and the broker in its own (default: 0 1)")
    p.add_argument("--keep", default=None, help="keep the work files (data, logs) here")


def cmd_bench_flower(args: argparse.Namespace) -> int:
    if args.clients < 1 or args.rounds < 1 or args.key_bits < 512:
        raise ConfigError("bench-flower needs --clients >= 1, --rounds >= 1, --key-bits >= 512")
    if min(args.fedmq_workers) < 0 or len(set(args.fedmq_workers)) != len(args.fedmq_workers):
        raise ConfigError("bench-flower --fedmq-workers: distinct numbers >= 0")
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
        from fedmq.benchmarks.flower_fedmq import run_fedmq

        fms = []
        for workers in args.fedmq_workers:
            print(f"fedmq: {task.clients} agents x {task.rounds} rounds, {args.key_bits}-bit "
                  f"keys, {workers} worker processes ...", flush=True)
            fms.append(run_fedmq(task, key_bits=args.key_bits, workers=workers,
                                 out_dir=str(work / f"fedmq-w{workers}") if args.keep else None))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(table(task, args.key_bits, fl, fms)))
    return 0


def register(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("bench-flower", help=help_text,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_bench_flower)
