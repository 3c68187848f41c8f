#!/usr/bin/env python3
"""The device on arm64: one fedmq agent in a Debian arm64 sysroot, under qemu, through a round.

``make arm64-check`` (root: it uses apt-get, binfmt_misc and chroot) does, timing each phase:

1. host tools: qemu-user-static, binfmt-support, mmdebstrap, arch-test (apt-get, only
   when one is missing);
2. binfmt_misc: mounted and the qemu-aarch64 handler enabled if need be, then probed;
3. a Debian bookworm arm64 sysroot with python3 and python3-venv (Python 3.11, as on
   Raspberry Pi OS), made once with mmdebstrap and cached in build/arm64/sysroot;
4. the fedmq wheel, built on the host, installed without extras into a fresh venv inside
   the sysroot, from binary wheels only (``--only-binary=:all:``: a dependency that would
   be compiled from source stops the check and is named);
5. a gateway on 127.0.0.1 (``fedmq init gateway`` in a temporary directory, small keys,
   the host's fedmq broker and aggregator), one enrolled device, and ONE arm64 agent run
   inside the sysroot (same network) until the fleet says it finished;
6. a table: the device venv's size and its largest packages, the agent's peak RSS
   (VmHWM of the emulated process, the emulator included) and the time of every phase.

The agent runs as a device would (``chroot SYSROOT /opt/fedmq/venv/bin/fedmq agent``, the
kernel handing the aarch64 binary to qemu through binfmt_misc). Where binfmt_misc cannot
be used, the check says so and runs the aarch64 python explicitly under
``qemu-aarch64-static -L SYSROOT`` instead (``--emulation qemu`` forces that path).
Inside the sysroot pip sees no host pip configuration; it gets the host's resolv.conf and
the CA bundle the host's pip trusts (PIP_CERT), so it reaches the index exactly as the
host does. Logs of every step land in build/arm64/logs/. It exits non-zero, with one line
saying what failed, unless the agent completed a training round and the fleet finished.

    .venv/bin/python scripts/arm64_check.py [--rebuild] [--emulation auto|chroot|qemu]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence

from arm64_device import device_install
from arm64_fleet import fleet
from arm64_host import binfmt, host_tools, sysroot
from arm64_session import BUILD, LOGS, CheckFailed, Session, rel


def report(s: Session, total: float, ok: bool) -> None:
    res = s.results
    rows: list[tuple[str, str]] = []
    if res.mode:
        how = ("chroot + binfmt_misc (the kernel hands the aarch64 ELF to qemu)"
               if res.mode == "chroot" else "qemu-aarch64-static -L SYSROOT, run explicitly")
        rows.append(("emulation", f"{how}; {res.qemu}"))
        if res.mode == "qemu":
            rows.append(("  why", res.mode_note))
    if res.guest_python:
        rows.append(("device python", res.guest_python))
    if res.venv_mib:
        rows.append(("device venv", f"{res.venv_mib:.1f} MiB (du -sk), site-packages "
                                    f"{res.site_mib:.1f} MiB"))
        rows.append(("  largest", ", ".join(f"{n} {m:.1f}" for n, m in res.packages[:7])
                     + " (MiB)"))
        rows.append(("  native wheels", res.wheels[0]))
        rows.append(("  pure wheels", res.wheels[1]))
        rows.append(("  from source", f"none (--only-binary=:all:); {res.shared_objects}"))
        rows.append(("sysroot", f"{res.sysroot_mib:.0f} MiB (du -sk; venv and pip cache "
                                f"included)"))
    if res.rss_kib:
        rows.append(("agent peak RSS", f"{res.rss_kib / 1024:.1f} MiB: VmHWM of the emulated "
                                       f"process, {res.rss_samples} samples; under qemu-user "
                                       f"it INCLUDES the emulator's own memory (translator, "
                                       f"code cache): an upper bound, not a Pi's figure"))
    if res.rounds:
        rows.append(("agent", f"key printed in {res.key_seconds:.1f} s; run "
                              f"{res.agent_seconds:.1f} s, rounds: {', '.join(res.rounds)}"))
    for ph in s.phases:
        rows.append((f"time {ph.name}", f"{ph.seconds:6.1f} s"
                     + ("  (cached)" if ph.note.startswith("reused") else "")))
    rows.append(("time total", f"{total:6.1f} s"))
    rows.append(("result", "PASS: the arm64 agent completed a round, the fleet finished"
                 if ok else f"FAIL in '{s.current}' (logs: {rel(LOGS)})"))
    width = max(len(k) for k, _ in rows) + 2
    rule = "-" * 100
    print(f"\n{rule}\narm64-check: one fedmq agent on linux/aarch64 under emulation\n{rule}")
    for key, value in rows:
        for i, line in enumerate(textwrap.wrap(value, 100 - width) or [""]):
            print(f"{key if i == 0 else '':<{width}}{line}")
    print(rule, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="make the sysroot anew")
    parser.add_argument("--variant", choices=["extract", "minbase"], default="extract",
                        help="extract (default, ~15 s): python3 and the libraries wheels need, "
                        "unpacked; minbase (~5 min): a Debian base system whose package "
                        "scripts all run under qemu")
    parser.add_argument("--emulation", choices=["auto", "chroot", "qemu"], default="auto",
                        help="auto: chroot + binfmt_misc when it works, else qemu -L")
    parser.add_argument("--bits", type=int, default=1024, help="Paillier key size")
    parser.add_argument("--rounds", type=int, default=1, help="training rounds")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds the agent may take for the whole run")
    args = parser.parse_args(argv)

    BUILD.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    session = Session(args)
    start = time.monotonic()
    ok = False
    try:
        for step in (host_tools, binfmt, sysroot, device_install, fleet):
            step(session)
        ok = True
    except CheckFailed as exc:
        print(f"arm64-check: FAILED in '{session.current}': {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"arm64-check: interrupted in '{session.current}'", file=sys.stderr, flush=True)
    except Exception as exc:  # one line, never a traceback
        print(f"arm64-check: FAILED in '{session.current}': {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
    finally:
        session.stop_children()
    report(session, time.monotonic() - start, ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
