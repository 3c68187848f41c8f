"""The host side of the arm64 check: apt tools, binfmt_misc and the cached Debian sysroot."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from arm64_session import (
    BUILD,
    GUEST_CA,
    GUEST_HOME,
    GUEST_PIP_CACHE,
    QEMU,
    SYSROOT,
    CheckFailed,
    Session,
    first_line,
    in_sysroot,
    last_line,
    read_json,
    rel,
    write_json,
)

STAMP = BUILD / "sysroot.json"  # written last: a sysroot without it is half made
SUITE = "bookworm"  # Raspberry Pi OS 12 is bookworm: Python 3.11, glibc 2.36
MIRROR = os.environ.get("FEDMQ_ARM64_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("FEDMQ_ARM64_SECURITY", "http://deb.debian.org/debian-security")
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "mmdebstrap", "arch-test",
                 "debian-archive-keyring")
SYSROOT_PACKAGES = ("python3", "python3-venv")
# The "extract" variant unpacks python3's dependencies without installing a base system (and
# needs no binfmt_misc: nothing runs inside while it is made), so add what manylinux wheels
# expect of one (minbase has them: numpy needs libstdc++).
EXTRACT_EXTRA = ("libstdc++6", "libgcc-s1", "zlib1g")
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def host_tools(s: Session) -> None:
    with s.phase("host tools", "apt-get: qemu-user-static, mmdebstrap, ...") as ph:
        if os.geteuid() != 0:
            raise CheckFailed("needs root (apt-get, binfmt_misc, chroot): "
                              "run it as root, e.g. sudo make arm64-check")
        if shutil.which("dpkg-query") is None or shutil.which("apt-get") is None:
            raise CheckFailed("needs a Debian-like host with dpkg and apt-get")
        missing = [p for p in HOST_PACKAGES if not dpkg_installed(p)]
        if not missing:
            ph.note = "already installed: " + ", ".join(HOST_PACKAGES[:3])
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        s.run(["apt-get", "update", "-qq"], what="apt-get update", log="apt.log", env=env)
        s.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
              what=f"apt-get install {' '.join(missing)}", log="apt.log", env=env)
        ph.note = "installed " + ", ".join(missing)


def binfmt(s: Session) -> None:
    res = s.results
    with s.phase("binfmt_misc", "can the kernel run arm64 binaries?") as ph:
        res.qemu = first_line(s.run([QEMU, "--version"], what="qemu-aarch64-static",
                                    log="binfmt.log").stdout)
        if s.args.emulation == "qemu":
            res.mode = "qemu"
            res.mode_note = "--emulation qemu: binfmt_misc not used"
            ph.note = res.mode_note
            return
        ok, why = enable_binfmt(s)
        if ok:
            res.mode = "chroot"
            res.mode_note = why
        elif s.args.emulation == "chroot":
            raise CheckFailed(f"--emulation chroot, but binfmt_misc cannot run arm64: {why}")
        else:
            fall_back_to_qemu(s, f"binfmt_misc unusable ({why})")
        ph.note = res.mode_note


def fall_back_to_qemu(s: Session, why: str) -> None:
    """Run the guest under qemu -L from now on, and say why."""
    s.results.mode = "qemu"
    s.results.mode_note = (f"{why}: the aarch64 python runs explicitly under "
                           f"qemu-aarch64-static -L SYSROOT")
    print(f"    NOTE: {s.results.mode_note}", flush=True)


def enable_binfmt(s: Session) -> tuple[bool, str]:
    steps: list[str] = []
    if not (BINFMT / "status").exists():
        proc = s.run(["mount", "binfmt_misc", "-t", "binfmt_misc", str(BINFMT)],
                     what="mount binfmt_misc", log="binfmt.log", check=False)
        if proc.returncode != 0:
            return False, f"mount binfmt_misc failed: {last_line(proc.stderr)}"
        steps.append("mounted binfmt_misc")
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        proc = s.run(["update-binfmts", "--enable", "qemu-aarch64"],
                     what="update-binfmts", log="binfmt.log", check=False)
        if proc.returncode != 0 or not entry.exists():
            return False, f"update-binfmts --enable qemu-aarch64 failed: " \
                          f"{last_line(proc.stderr + proc.stdout)}"
        steps.append("enabled qemu-aarch64")
    text = entry.read_text()
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("flags:")), "")
    if "F" not in flags:  # the interpreter must be opened on the host, not in the chroot
        return False, f"the qemu-aarch64 handler lacks the F (fix binary) flag: {flags!r}"
    proc = s.run(["arch-test", "arm64"], what="arch-test", log="binfmt.log", check=False)
    if proc.returncode != 0 or "ok" not in proc.stdout:
        return False, f"arch-test arm64: {last_line(proc.stdout + proc.stderr)}"
    steps.append(f"qemu-aarch64 handler enabled (flags {flags}), arch-test arm64 ok")
    return True, "; ".join(steps)


def sysroot(s: Session) -> None:
    with s.phase("sysroot", f"Debian {SUITE} arm64 sysroot, cached in {rel(SYSROOT)}") as ph:
        # extract unless minbase is asked for and package scripts can run (binfmt_misc):
        # the agent needs python3 and the libraries manylinux wheels link, not a configured
        # base system, and minbase costs ~5 min of package scripts under qemu.
        variant = "minbase" if s.args.variant == "minbase" and s.results.mode == "chroot" \
            else "extract"
        wanted = {"suite": SUITE, "arch": "arm64", "packages": list(SYSROOT_PACKAGES),
                  "variant": variant}
        stamp = read_json(STAMP)
        if (not s.args.rebuild and SYSROOT.is_dir() and stamp
                and all(stamp.get(k) == v for k, v in wanted.items())):
            ph.note = f"reused {rel(SYSROOT)} (made {stamp.get('made', '?')}, " \
                      f"variant {stamp.get('variant')})"
        else:
            make_sysroot(s, variant)
            write_json(STAMP, {**wanted, "made": time.strftime("%Y-%m-%d %H:%M:%S")})
            ph.note = f"made {rel(SYSROOT)} with mmdebstrap --variant={variant}"
        # Each run: the host's resolver and CA bundle (pip inside must reach PyPI as the
        # host's pip does), and a clean /opt/fedmq.
        (SYSROOT / "etc").mkdir(exist_ok=True)
        shutil.copy2("/etc/resolv.conf", SYSROOT / "etc" / "resolv.conf")
        home = in_sysroot(GUEST_HOME)
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        in_sysroot(GUEST_PIP_CACHE).mkdir(parents=True, exist_ok=True)
        bundle = host_ca_bundle()
        if bundle:
            shutil.copy2(bundle, in_sysroot(GUEST_CA))
        probe_guest_python(s)


def make_sysroot(s: Session, variant: str) -> None:
    partial = SYSROOT.with_name("sysroot.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(SYSROOT, ignore_errors=True)
    STAMP.unlink(missing_ok=True)
    packages = list(SYSROOT_PACKAGES)
    if variant == "extract":
        packages += EXTRACT_EXTRA
    cmd = ["mmdebstrap", "--arch=arm64", f"--variant={variant}",
           f"--include={','.join(packages)}", "--components=main"]
    if variant == "extract":
        cmd.append("--skip=check/qemu")  # nothing runs inside: no binfmt_misc needed
    cmd += [SUITE, str(partial), f"deb {MIRROR} {SUITE} main",
            f"deb {MIRROR} {SUITE}-updates main", f"deb {SECURITY} {SUITE}-security main"]
    print(f"    mmdebstrap {SUITE} arm64 {variant}" + (
        " (minutes: every package's scripts run under qemu)" if variant == "minbase"
        else " (unpacked only: no package scripts run)"), flush=True)
    s.run(cmd, what="mmdebstrap", log="mmdebstrap.log", timeout=3600)
    partial.rename(SYSROOT)


def probe_guest_python(s: Session) -> None:
    code = "import platform; print(platform.machine(), platform.python_version())"
    argv = s.guest_argv("/usr/bin/python3", ["-c", code])
    proc = s.guest(argv, what="the sysroot's python3", log="guest.log",
                   check=s.results.mode == "qemu")
    if proc.returncode != 0 and s.args.emulation == "auto":
        fall_back_to_qemu(s, f"chroot into the sysroot failed ({last_line(proc.stderr)})")
        argv = s.guest_argv("/usr/bin/python3", ["-c", code])
        proc = s.guest(argv, what="the sysroot's python3 under qemu -L", log="guest.log")
    elif proc.returncode != 0:
        raise CheckFailed(f"chroot {rel(SYSROOT)} python3 failed: {last_line(proc.stderr)}")
    machine, _, version = proc.stdout.strip().partition(" ")
    if machine != "aarch64":
        raise CheckFailed(f"the sysroot's python3 says it runs on {machine!r}, not aarch64")
    s.results.guest_python = f"Python {version} (Debian {SUITE} arm64)"


def dpkg_installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.startswith("ii")


def host_ca_bundle() -> Path | None:
    """The CA bundle the host's pip trusts (PIP_CERT, else the system bundle)."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    return system if system.is_file() else None
