"""One real fleet on 127.0.0.1, made and run with the ``fedmq`` CLI as a user would.

``fedmq init gateway --loopback`` (TLS with a generated CA, a login per device, the
topic ACL), the device CSVs next to each ``agent.toml``, ``fedmq agent
--show-public-key --csv`` per device into ``keys.csv`` and ``fedmq enroll
--from-file``; then a broker (``fedmq broker`` or Mosquitto configured by ``fedmq
broker mosquitto-config`` with the gateway's certificate), one ``fedmq agent``
process per device and ``fedmq aggregator``, each a separate process. Only the
[model], [training], [rounds] and [codec] tables of aggregator.toml and the [data]
table of each agent.toml are rewritten: the model and data set are the experiment.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.broker.embedded import free_port, wait_listening
from fedmq.broker.mosquitto import CONF_FILE, CREDENTIALS_FILE, read_credentials
from fedmq.cli import main as fedmq_main
from fedmq.protocol.errors import ConfigError

FLEET = "realdata"
TomlValue = str | int | float | bool | Sequence[float] | Sequence[str] | None


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:  # pragma: no cover - callers drop None keys
        raise ValueError("TOML has no null")
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def set_tables(text: str, tables: Mapping[str, Mapping[str, TomlValue]]) -> str:
    """``text`` with keys of the named tables replaced (None: removed) or appended.

    Only for the flat, one-line-per-key configs ``fedmq init`` writes; a table the
    text lacks is added at the end.
    """
    out: list[str] = []
    pending: dict[str, dict[str, TomlValue]] = {k: dict(v) for k, v in tables.items()}
    current: str | None = None

    def flush() -> None:
        if current in pending:
            out.extend(f"{k} = {toml_value(v)}" for k, v in pending.pop(current).items()
                       if v is not None)

    for line in text.splitlines():
        header = re.match(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$", line)
        if header:
            flush()
            current = header.group(1)
        elif current in pending and (key := re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", line)):
            updates = pending[current]
            if key.group(1) in updates:
                value = updates.pop(key.group(1))
                if value is not None:
                    out.append(f"{key.group(1)} = {toml_value(value)}")
                continue
        out.append(line)
    flush()
    for name, rest in pending.items():
        out += ["", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in rest.items()
                                   if v is not None)]
    return "\n".join(out) + "\n"


def edit_toml(path: Path, tables: Mapping[str, Mapping[str, TomlValue]]) -> None:
    path.write_text(set_tables(path.read_text(encoding="utf-8"), tables), encoding="utf-8")


def cli(*argv: str) -> str:
    """Run a short ``fedmq`` command in this process (setup steps); its stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = fedmq_main(list(argv))
    if code != 0:
        raise ConfigError(f"fedmq {' '.join(argv)} exited {code}: {buf.getvalue()[-500:]}")
    return buf.getvalue()


@dataclass(frozen=True)
class Gateway:
    root: Path
    port: int
    devices: tuple[str, ...]

    @property
    def aggregator_toml(self) -> Path:
        return self.root / "aggregator.toml"

    def agent_toml(self, device: str) -> Path:
        return self.root / "devices" / device / "agent.toml"

    @property
    def latest(self) -> Path:
        return self.root / "state" / "latest"  # [output] state_dir = "state"


def make_gateway(root: Path, data: Mapping[str, Path], *, bits: int, rounds: int,
                 aggregator: Mapping[str, Mapping[str, TomlValue]],
                 agent_data: Mapping[str, TomlValue]) -> Gateway:
    """``fedmq init gateway``, data in place, configs edited, every device enrolled."""
    devices = tuple(d for d in data if d != "test")
    port = free_port()
    cli("init", "gateway", str(root), "--fleet", FLEET, "--loopback", "--port", str(port),
        "--devices", ",".join(devices), "--bits", str(bits), "--rounds", str(rounds))
    gw = Gateway(root, port, devices)
    edit_toml(gw.aggregator_toml, aggregator)
    keys = []
    for device in devices:
        shutil.copyfile(data[device], gw.agent_toml(device).parent / "data.csv")
        edit_toml(gw.agent_toml(device), {"data": agent_data})
        keys.append(cli("agent", "--config", str(gw.agent_toml(device)), "--show-public-key",
                        "--csv").strip())
    (root / "keys.csv").write_text("\n".join(keys) + "\n", encoding="utf-8")
    cli("enroll", "--config", str(gw.aggregator_toml), "--from-file", str(root / "keys.csv"))
    return gw


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (str(p) for p in (Path("/usr/sbin/mosquitto"), Path("/usr/bin/mosquitto"))
         if p.exists()), None)
    if found is None:
        raise ConfigError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    return found


def mosquitto_conf(gw: Gateway) -> Path:
    """``fedmq broker mosquitto-config`` for the gateway; its passwords into the
    devices' and the aggregator's password files (what the README tells the operator)."""
    out = gw.root / "mosquitto"
    argv = ["broker", "mosquitto-config", "--out", str(out), "--fleet", FLEET,
            "--host", "127.0.0.1", "--port", str(gw.port),
            "--tls-cert", str(gw.root / "tls" / "server.crt"),
            "--tls-key", str(gw.root / "tls" / "server.key")]
    for device in gw.devices:
        argv += ["--agent", device]
    cli(*argv)
    credentials = read_credentials(out / CREDENTIALS_FILE)
    (gw.root / "aggregator.password").write_text(credentials["aggregator"] + "\n")
    for device in gw.devices:
        (gw.agent_toml(device).parent / "mqtt.password").write_text(credentials[device] + "\n")
    conf = out / CONF_FILE
    if os.geteuid() == 0:
        # As root Mosquitto drops to user 'mosquitto', which cannot read root's 0600
        # password file; an operator chowns it instead (README).
        conf.write_text(conf.read_text() + "user root\n")
    return conf


@dataclass
class Processes:
    """Child processes of one run, each logging to ``<logs>/<name>.log``; all stopped
    (by their own pid) when the run ends."""

    logs: Path
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT)
        self.started[name] = proc
        return proc

    def fedmq(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "fedmq", *argv])

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for proc in self.started.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_fleet(gw: Gateway, broker: str) -> Iterator[Processes]:
    """The broker and one ``fedmq agent`` per device, until the block ends."""
    procs = Processes(gw.root / "logs")
    try:
        if broker == "mosquitto":
            proc = procs.start("broker", [mosquitto_binary(), "-c", str(mosquitto_conf(gw))])
        else:
            proc = procs.fedmq("broker", "broker", "--config", str(gw.root / "broker.toml"))
        if not wait_listening(gw.port, 15.0, lambda: proc.poll() is None):
            raise ConfigError(f"the broker is not listening on 127.0.0.1:{gw.port}")
        for device in gw.devices:
            procs.fedmq(device, "agent", "--config", str(gw.agent_toml(device)))
        yield procs
    finally:
        procs.stop_all()


def run_aggregator(gw: Gateway, procs: Processes, timeout: float) -> float:
    """``fedmq aggregator`` to the end of its run; its wall-clock seconds."""
    start = time.monotonic()
    proc = procs.fedmq("aggregator", "aggregator", "--config", str(gw.aggregator_toml))
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the aggregator did not finish within {timeout:.0f} s:\n"
                          + procs.log_tail("aggregator")) from None
    if code != 0:
        raise ConfigError(f"the aggregator exited {code}:\n" + procs.log_tail("aggregator"))
    return time.monotonic() - start
