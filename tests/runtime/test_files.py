"""runtime.files: the one atomic-write helper; runtime.locks stays off the device's path."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fedmq.runtime.files import load_or_create_signer, load_signer, write_atomic, write_new

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_replaces_whole_file_with_mode_and_no_temp_left(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.txt"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(tmp_path / "secret", b"pw", private=True)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.txt", "secret", "sub"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_threads_of_one_process_never_share_a_temp_file(tmp_path: Path) -> None:
    """The old helper named its temp file after the pid only: two threads collided."""
    path, errors = tmp_path / "f", []

    def writer(n: int) -> None:
        try:
            for _ in range(30):
                write_atomic(path, str(n).encode() * 1000)
        except OSError as exc:  # pragma: no cover - what the old helper did
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = path.read_bytes()
    assert len(data) == 1000 and len(set(data)) == 1  # one writer's whole content


def test_the_device_import_path_does_not_need_filelock(tmp_path: Path) -> None:
    """filelock comes with the gateway extra: importing must not need it, only locking; a
    device making its own signing key takes no lock either."""
    code = ("import sys, edge_agent.agent, fedmq.cli, aggregator.allowlist, broker.passwords; "
            "from fedmq.runtime.files import load_or_create_signer; "
            f"load_or_create_signer({str(tmp_path / 'signing.key')!r}); "
            "fedmq.cli.build_parser(); sys.exit('filelock' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], env=ENV).returncode == 0
    assert (tmp_path / "signing.key").exists()


def test_write_new_never_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_new(path, b"first", private=True)
    with pytest.raises(FileExistsError):
        write_new(path, b"second", private=True)
    assert path.read_bytes() == b"first" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_without_hard_links_write_new_still_never_replaces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAT and some network shares refuse os.link (EPERM): checked, then renamed."""
    import errno

    def no_links(*_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "key"
    write_new(path, b"first", private=True)
    with pytest.raises(FileExistsError):
        write_new(path, b"second", private=True)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["key"]


def test_a_signing_key_made_by_threads_together_is_one_key(tmp_path: Path) -> None:
    """Each caller returns the key on disk, never one that lost the race to be written."""
    path, found = tmp_path / "signing.key", []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        found.append(load_or_create_signer(path).public_hex)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(found) == {load_signer(path).public_hex} and len(found) == 8
