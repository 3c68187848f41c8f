"""The fleet run of the arm64 check: a loopback gateway, enrolment, one agent with RSS sampled."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from arm64_session import (
    GUEST_DEVICE,
    GUEST_VENV,
    LOGS,
    SYSROOT,
    CheckFailed,
    Session,
    in_sysroot,
    last_line,
    rel,
    stop,
)

from fedmq.broker.embedded import free_port, wait_listening

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the host venv is 3.11; tomli is a dependency on 3.10
    import tomli as tomllib

DEVICE_ID = "pi-arm64"
BROKER_START_SECONDS = 30


def fleet(s: Session) -> None:
    with tempfile.TemporaryDirectory(prefix="fedmq-arm64-") as tmp:
        fleet_in(s, Path(tmp))


def fleet_in(s: Session, tmp: Path) -> None:
    fedmq = str(s.host_bin / "fedmq")
    gw = tmp / "gw"
    with s.phase("gateway", "fedmq init gateway on 127.0.0.1 (host)") as ph:
        port = free_port()
        s.run([fedmq, "init", "gateway", gw, "--devices", DEVICE_ID, "--loopback",
               "--port", str(port), "--bits", str(s.args.bits),
               "--rounds", str(s.args.rounds)],
              what="fedmq init gateway", log="gateway.log")
        s.run([fedmq, "sample-data", "--devices", "1", "--out", tmp / "data"],
              what="fedmq sample-data", log="gateway.log")
        device = in_sysroot(GUEST_DEVICE)
        shutil.copytree(gw / "devices" / DEVICE_ID, device)
        shutil.copy2(tmp / "data" / "dev-000.csv", device / "data.csv")
        check_csv(device / "agent.toml", device / "data.csv")
        ph.note = (f"127.0.0.1:{port}, {s.args.bits}-bit Paillier key, "
                   f"{s.args.rounds} round(s), device {DEVICE_ID}")

    agent_cfg = s.gpath(f"{GUEST_DEVICE}/agent.toml")
    with s.phase("key + enrol", "the device makes its key, the gateway enrols it") as ph:
        start = time.monotonic()
        if s.results.mode == "chroot":
            argv = s.guest_argv(f"{GUEST_VENV}/bin/fedmq", [])
        else:  # an entry-point script's shebang needs binfmt_misc: run the module
            argv = s.guest_argv(f"{GUEST_VENV}/bin/python", ["-m", "fedmq"])
        proc = s.guest([*argv, "agent", "--config", agent_cfg, "--show-public-key", "--csv"],
                       what="fedmq agent --show-public-key (arm64)", log="agent-key.log",
                       timeout=300)
        s.results.key_seconds = time.monotonic() - start
        lines = [ln for ln in proc.stdout.splitlines()
                 if re.fullmatch(rf"{DEVICE_ID},[0-9a-f]{{64}}", ln.strip())]
        if not lines:
            raise CheckFailed(f"the arm64 agent printed no '{DEVICE_ID},<key>' line: "
                              f"{last_line(proc.stdout + proc.stderr)}")
        keys = tmp / "keys.csv"
        keys.write_text(lines[0].strip() + "\n")
        s.run([fedmq, "enroll", "--config", gw / "aggregator.toml", "--from-file", keys],
              what="fedmq enroll", log="gateway.log")
        ph.note = f"{DEVICE_ID} enrolled; the arm64 agent started in " \
                  f"{s.results.key_seconds:.1f} s"

    with s.phase("fleet run", "broker, aggregator (host), ONE arm64 agent") as ph:
        run_round(s, fedmq, gw, port, [*argv, "agent", "--config", agent_cfg])
        ph.note = f"agent ran {s.results.agent_seconds:.1f} s"


def run_round(s: Session, fedmq: str, gw: Path, port: int, agent_argv: list[str]) -> None:
    broker_log = (LOGS / "broker.log").open("wb")
    agg_log = (LOGS / "aggregator.log").open("wb")
    agent_log_path = LOGS / "agent.log"
    res = s.results
    try:
        broker = s.spawn([fedmq, "broker", "--config", str(gw / "broker.toml")], broker_log)
        wait_for_broker(port, broker, LOGS / "broker.log")
        aggregator = s.spawn([fedmq, "aggregator", "--config", str(gw / "aggregator.toml")],
                             agg_log)
        with agent_log_path.open("wb") as agent_log:
            rc, hwm, samples, seconds = run_sampled(agent_argv, s.guest_env(), agent_log,
                                                    timeout=s.args.timeout)
        res.rss_kib, res.rss_samples, res.agent_seconds = hwm, samples, seconds
        agent_text = agent_log_path.read_text(errors="replace")
        res.rounds = re.findall(r"round \d+ \((\w+)\)", agent_text)
        if rc is None:
            raise CheckFailed(f"the arm64 agent did not finish within {s.args.timeout:.0f}"
                              f" s (log {rel(agent_log_path)})")
        if rc != 0:
            raise CheckFailed(f"the arm64 agent exited {rc}: {last_line(agent_text)} "
                              f"(log {rel(agent_log_path)})")
        if "training" not in res.rounds or "fleet finished" not in agent_text:
            raise CheckFailed(f"the arm64 agent exited 0 without a training round and "
                              f"'fleet finished' (log {rel(agent_log_path)})")
        try:
            agg_rc = aggregator.wait(60)
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"the aggregator did not end after the agent finished "
                              f"(log {rel(LOGS / 'aggregator.log')})") from exc
        if agg_rc != 0:
            raise CheckFailed(f"the aggregator exited {agg_rc}: "
                              f"{last_line((LOGS / 'aggregator.log').read_text())}")
    finally:
        s.stop_children()
        broker_log.close()
        agg_log.close()


def wait_for_broker(port: int, broker: subprocess.Popen[bytes], log: Path) -> None:
    """Return once the broker listens on 127.0.0.1:``port``; else say why it does not."""
    if wait_listening(port, BROKER_START_SECONDS, lambda: broker.poll() is None):
        return
    if broker.poll() is not None:
        raise CheckFailed(f"the broker exited {broker.returncode}: "
                          f"{last_line(log.read_text(errors='replace'))} (log {rel(log)})")
    raise CheckFailed(f"the broker did not listen on 127.0.0.1:{port} "
                      f"within {BROKER_START_SECONDS} s")


def check_csv(agent_toml: Path, data: Path) -> None:
    """The sample CSV has the columns the gateway wrote into the device's [data]."""
    cfg = tomllib.loads(agent_toml.read_text())["data"]
    header = data.read_text().splitlines()[0].split(cfg.get("delimiter", ","))
    missing = [c for c in [*cfg["features"], cfg["label"]] if c not in header]
    if missing:
        raise CheckFailed(f"fedmq sample-data's CSV lacks the gateway's columns {missing}")


def vm_hwm_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None  # a zombie: its memory is gone


def run_sampled(argv: list[str], env: dict[str, str], log: IO[bytes],
                timeout: float) -> tuple[int | None, int, int, float]:
    """Run the agent; poll its VmHWM until it exits: (exit code or None on timeout, peak
    KiB, samples, seconds). VmHWM, not wait4's ru_maxrss, which a child inherits from us.

    Under chroot + binfmt_misc the pid is the emulated process itself: chroot execs the
    aarch64 binary and the kernel runs qemu in its place, in the same process."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=SYSROOT)
    peak, samples = 0, 0
    try:
        while proc.poll() is None:
            hwm = vm_hwm_kib(proc.pid)
            if hwm is not None:
                peak, samples = max(peak, hwm), samples + 1
            if time.monotonic() - start > timeout:
                return None, peak, samples, time.monotonic() - start
            time.sleep(0.02)
        return proc.returncode, peak, samples, time.monotonic() - start
    finally:
        stop(proc)
