"""The broker's password file: add-user without a terminal, generated passwords, parallel users."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import wait_until

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def add_user(password_file: Path, user: str, *extra: str,
             stdin: str | None = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedmq", "broker", "add-user", "--password-file",
                           str(password_file), "--username", user, *extra], input=stdin,
                          capture_output=True, text=True, env=ENV, timeout=60)


def users(password_file: Path) -> list[str]:
    return sorted(ln.split(":", 1)[0] for ln in password_file.read_text().splitlines())


def test_without_a_terminal_is_one_line(tmp_path: Path) -> None:
    proc = add_user(tmp_path / "pw", "dev-1")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--password-stdin" in proc.stderr and "--generate" in proc.stderr
    assert not (tmp_path / "pw").exists()


def test_password_stdin_and_generate(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    assert add_user(pw, "dev-1", "--password-stdin", stdin="long enough\n").returncode == 0
    shown = add_user(pw, "dev-2", "--generate")
    assert shown.returncode == 0 and "password (shown once): " in shown.stdout
    out = tmp_path / "dev-3.password"
    made = add_user(pw, "dev-3", "--generate", "--password-out", str(out))
    assert made.returncode == 0 and str(out) in made.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(out.read_text().strip()) >= 20
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert users(pw) == ["dev-1", "dev-2", "dev-3"]
    short = add_user(pw, "dev-4", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "8 characters" in short.stderr


def _sleeping(pid: int, since: dict[int, float]) -> bool:
    """True once ``pid`` has slept (state S) for 0.2 s: done importing, blocked on stdin."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state != "S":
        since.pop(pid, None)
        return False
    return time.monotonic() - since.setdefault(pid, time.monotonic()) > 0.2


@pytest.mark.slow
def test_10_parallel_add_users_keep_all_10(tmp_path: Path) -> None:
    """The issue saw 9 of 10: each process read the file, added itself and renamed over."""
    pw = tmp_path / "passwords.txt"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "fedmq", "broker", "add-user", "--password-file", str(pw),
         "--username", f"dev-{i}", "--password-stdin"], env=ENV, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(10)]
    # Release all ten at once when each waits for its password: they hash and then
    # rewrite the file at about the same moment, as parallel provisioning scripts do.
    since: dict[int, float] = {}
    for p in procs:
        wait_until(lambda p=p: _sleeping(p.pid, since), f"add-user {p.pid} to wait for stdin",
                   timeout=60)
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("password-of-dev\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert users(pw) == [f"dev-{i}" for i in range(10)]
