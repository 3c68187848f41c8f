"""One run of the arm64 check: its paths, phases, logs, results and the commands it runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedmq.broker.embedded import stop_process

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "arm64"
SYSROOT = BUILD / "sysroot"
LOGS = BUILD / "logs"
QEMU = "/usr/bin/qemu-aarch64-static"

GUEST_HOME = "/opt/fedmq"  # everything the check puts in the sysroot, made anew each run
GUEST_VENV = f"{GUEST_HOME}/venv"  # the README's service layout: /opt/fedmq/venv
GUEST_DEVICE = f"{GUEST_HOME}/device"  # the device bundle: agent.toml, ca.crt, data.csv
GUEST_WHEELS = f"{GUEST_HOME}/wheel"
GUEST_CA = f"{GUEST_HOME}/host-ca.crt"
GUEST_PIP_CACHE = "/var/cache/fedmq-pip"  # pip's HTTP cache, kept; never built wheels


class CheckFailed(Exception):
    """One step failed; the message is the one line the check prints."""


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    note: str = ""


@dataclass
class Results:
    mode: str = ""
    mode_note: str = ""
    guest_python: str = ""
    qemu: str = ""
    venv_mib: float = 0.0
    site_mib: float = 0.0
    sysroot_mib: float = 0.0
    packages: list[tuple[str, float]] = field(default_factory=list)
    wheels: list[str] = field(default_factory=list)
    shared_objects: str = ""
    rss_kib: int = 0
    rss_samples: int = 0
    key_seconds: float = 0.0
    agent_seconds: float = 0.0
    rounds: list[str] = field(default_factory=list)


class Session:
    """The phases in order, their timings and what they found."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.phases: list[Phase] = []
        self.current = "start"
        self.results = Results()
        self.host_bin = Path(sys.executable).parent
        self.children: list[subprocess.Popen[bytes]] = []

    @contextlib.contextmanager
    def phase(self, name: str, title: str) -> Iterator[Phase]:
        self.current = name
        record = Phase(name)
        print(f"[{len(self.phases) + 1}] {name}: {title} ...", flush=True)
        start = time.monotonic()
        done = False
        try:
            yield record
            done = True
        finally:
            record.seconds = time.monotonic() - start
            self.phases.append(record)
            note = f" ({record.note})" if record.note else ""
            print(f"    {'done' if done else 'stopped'} in {record.seconds:.1f} s{note}",
                  flush=True)

    def run(self, cmd: Sequence[str | Path], *, what: str, log: str, timeout: float = 600,
            env: dict[str, str] | None = None, cwd: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``cmd``, append its output to logs/``log``; a failure is one CheckFailed line."""
        argv = [str(c) for c in cmd]
        path = LOGS / log
        try:
            proc = subprocess.run(argv, capture_output=True, encoding="utf-8", errors="replace",
                                  env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"{what}: no answer after {timeout:.0f} s (log {rel(path)})") \
                from exc
        except OSError as exc:
            raise CheckFailed(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
        with path.open("a", encoding="utf-8") as out:
            out.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]\n")
        if check and proc.returncode != 0:
            raise CheckFailed(f"{what} failed (exit {proc.returncode}): "
                              f"{last_line(proc.stderr + proc.stdout)} (log {rel(path)})")
        return proc

    def guest(self, cmd: Sequence[str], *, what: str, log: str, timeout: float = 600,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an arm64 command (from guest_argv) in the device's environment, from the
        sysroot's top (never from the checkout: ``python -m`` puts the directory on sys.path)."""
        return self.run(cmd, what=what, log=log, timeout=timeout, env=self.guest_env(),
                        cwd=SYSROOT, check=check)

    def spawn(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.children.append(child)
        return child

    def stop_children(self) -> None:
        for child in reversed(self.children):
            stop(child)
        self.children.clear()

    # ---- the guest: chroot + binfmt, or qemu -L -------------------------------------------

    def gpath(self, guest: str) -> str:
        """A sysroot path as the guest process must name it.

        Under chroot that is the path itself. Under qemu -L it is the host path: qemu
        redirects an absolute path into the prefix only when the file already exists
        there, so a file the guest creates (a venv, a signing key) would land on the host.
        """
        return guest if self.results.mode == "chroot" else str(in_sysroot(guest))

    def guest_argv(self, exe: str, args: Sequence[str]) -> list[str]:
        if self.results.mode == "chroot":
            return [shutil.which("chroot") or "/usr/sbin/chroot", str(SYSROOT), exe, *args]
        return [QEMU, "-L", str(SYSROOT), self.gpath(exe), *args]

    def guest_env(self) -> dict[str, str]:
        """A device's environment: nothing of the host's pip, Python or venv settings."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": self.gpath("/root"), "LANG": "C.UTF-8", "TZ": "UTC",
               "PIP_CONFIG_FILE": os.devnull,  # no pip.conf: under qemu -L the host's shows
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
               "PIP_CACHE_DIR": self.gpath(GUEST_PIP_CACHE)}
        if in_sysroot(GUEST_CA).exists():
            env["PIP_CERT"] = self.gpath(GUEST_CA)
        if os.environ.get("PIP_INDEX_URL", "").startswith(("http://", "https://")):
            env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]  # a mirror the host uses
        if os.environ.get("PIP_DEFAULT_TIMEOUT", "").isdigit():
            env["PIP_DEFAULT_TIMEOUT"] = os.environ["PIP_DEFAULT_TIMEOUT"]
        return env


stop = stop_process  # terminate; kill after 10 s


def in_sysroot(guest: str) -> Path:
    """The host path of the guest's absolute path ``guest``."""
    return SYSROOT / guest.lstrip("/")


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


def first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "(no output)")[:240]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")
