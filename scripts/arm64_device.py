"""The device install of the arm64 check: wheel, venv, binary-only pip install, sizes, ELF check."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

from arm64_session import (
    BUILD,
    GUEST_HOME,
    GUEST_VENV,
    GUEST_WHEELS,
    LOGS,
    ROOT,
    SYSROOT,
    CheckFailed,
    Session,
    in_sysroot,
    last_line,
    read_json,
    rel,
)

WHEEL_DIR = BUILD / "wheel"
EM_AARCH64 = 183  # ELF e_machine
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


def device_install(s: Session) -> None:
    with s.phase("wheel", "pip wheel --no-deps . on the host") as ph:
        shutil.rmtree(WHEEL_DIR, ignore_errors=True)
        s.run([s.host_bin / "pip", "wheel", "-q", "--no-deps", ".", "-w", WHEEL_DIR],
              what="pip wheel", log="wheel.log", cwd=ROOT, timeout=300)
        wheels = sorted(WHEEL_DIR.glob("fedmq-*.whl"))
        if len(wheels) != 1 or not wheels[0].name.endswith("-py3-none-any.whl"):
            raise CheckFailed(f"pip wheel made {[w.name for w in wheels]}, "
                              f"not one pure fedmq wheel")
        wheel = wheels[0]
        target = in_sysroot(GUEST_WHEELS)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, target / wheel.name)
        ph.note = f"{rel(wheel)}, {wheel.stat().st_size / 1024:.0f} KiB"

    with s.phase("device venv", "fresh venv in the sysroot: python3 -m venv (arm64)") as ph:
        ph.note = make_venv(s)

    with s.phase("pip install", "fedmq, no extras (arm64, wheels only)") as ph:
        wheel_path = s.gpath(f"{GUEST_WHEELS}/{wheel.name}")
        pip = s.guest_argv(f"{GUEST_VENV}/bin/python", ["-m", "pip"])
        proc = s.guest([*pip, "install", "--only-binary=:all:", "--progress-bar", "off",
                        wheel_path], what="pip install (arm64)", log="pip.log",
                       timeout=1800, check=False)
        if proc.returncode != 0:
            raise CheckFailed(explain_pip_failure(s, pip, wheel_path, proc))
        ph.note = "no sdist built"
    measure_venv(s)


def make_venv(s: Session) -> str:
    """Make the device venv with the sysroot's python3; the phase's note."""
    py = "/usr/bin/python3"
    if s.results.mode == "chroot":
        s.guest(s.guest_argv(py, ["-m", "venv", GUEST_VENV]),
                what="python3 -m venv (arm64)", log="venv.log")
        return GUEST_VENV
    # ensurepip starts `python -m pip` as a child, which the host cannot execute
    # without binfmt_misc: make the venv bare, then run Debian's bundled pip wheel.
    s.guest(s.guest_argv(py, ["-m", "venv", "--without-pip", s.gpath(GUEST_VENV)]),
            what="python3 -m venv (arm64)", log="venv.log")
    bundled = sorted((SYSROOT / "usr/share/python-wheels").glob("pip-*.whl"))
    if not bundled:
        raise CheckFailed("the sysroot has no /usr/share/python-wheels/pip-*.whl")
    pip_whl = s.gpath("/usr/share/python-wheels/" + bundled[-1].name)
    s.guest(s.guest_argv(f"{GUEST_VENV}/bin/python", [
        f"{pip_whl}/pip", "install", "--no-index", "--find-links",
        s.gpath("/usr/share/python-wheels"), "pip", "setuptools"]),
        what="pip bootstrap (arm64)", log="venv.log")
    return f"{GUEST_VENV} (pip from {bundled[-1].name})"


def explain_pip_failure(s: Session, pip: list[str], wheel_path: str,
                        proc: subprocess.CompletedProcess[str]) -> str:
    """Name what would have been compiled from source, if that was the cause."""
    text = proc.stdout + proc.stderr
    missing = re.findall(r"No matching distribution found for (\S+)", text)
    if not missing:
        return f"pip install (arm64) failed: {last_line(text)} (log {rel(LOGS / 'pip.log')})"
    report = f"{GUEST_HOME}/dry-run.json"
    s.guest([*pip, "install", "--dry-run", "--ignore-installed", "--report", s.gpath(report),
             wheel_path], what="pip dry run", log="pip.log", timeout=900, check=False)
    sdists = []
    for item in read_json(in_sysroot(report)).get("install", []):
        url = str(item.get("download_info", {}).get("url", ""))
        if url.endswith(SDIST_SUFFIXES):
            sdists.append(f"{item['metadata']['name']} {item['metadata']['version']}")
    what = ", ".join(sdists) if sdists else ", ".join(missing)
    return (f"no aarch64/cp311 wheel on the index for {what}: pip would compile it from "
            f"source, which this check refuses (log {rel(LOGS / 'pip.log')})")


def measure_venv(s: Session) -> None:
    venv = in_sysroot(GUEST_VENV)
    site = next(venv.glob("lib/python3*/site-packages"))
    res = s.results
    res.venv_mib, res.site_mib = du_kib(venv) / 1024, du_kib(site) / 1024
    res.sysroot_mib = du_kib(SYSROOT) / 1024
    res.packages = sorted(((n, k / 1024) for n, k in dist_sizes(site).items()),
                          key=lambda kv: -kv[1])
    res.wheels = wheel_tags(site)
    counts: dict[int, int] = {}
    for so in venv.rglob("*.so*"):
        if so.is_file() and not so.is_symlink():
            machine = elf_machine(so)
            if machine is not None:
                counts[machine] = counts.get(machine, 0) + 1
    foreign = sum(n for m, n in counts.items() if m != EM_AARCH64)
    if foreign:
        raise CheckFailed(f"the device venv holds {foreign} shared objects that are not "
                          f"aarch64 (machine ids {sorted(counts)})")
    res.shared_objects = f"{counts.get(EM_AARCH64, 0)} ELF shared objects, all aarch64"


def du_kib(*paths: Path) -> int:
    out = subprocess.run(["du", "-sk", "--total", *map(str, paths)], capture_output=True,
                         text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0])


def dist_sizes(site: Path) -> dict[str, int]:
    """KiB per installed distribution: the top-level entries its RECORD names, with its
    .dist-info; entries no RECORD claims are counted as 'other'."""
    owner: dict[str, str] = {}
    for info in site.glob("*.dist-info"):
        name = info.name.split("-")[0].lower().replace("_", "-")
        owner[info.name] = name
        record = info / "RECORD"
        if not record.is_file():
            continue
        with record.open(newline="") as fh:
            for row in csv.reader(fh):
                if row and not row[0].startswith(".."):
                    owner.setdefault(row[0].split("/")[0], name)
    sizes: dict[str, int] = {}
    for entry in site.iterdir():
        name = owner.get(entry.name, "other")
        sizes[name] = sizes.get(name, 0) + du_kib(entry)
    return sizes


def wheel_tags(site: Path) -> list[str]:
    """Two lines: the platform wheels with their platform tag, and the pure ones."""
    native, pure = [], []
    for info in sorted(site.glob("*.dist-info")):
        wheel = info / "WHEEL"
        tags = [ln.split(":", 1)[1].strip() for ln in wheel.read_text().splitlines()
                if ln.startswith("Tag:")] if wheel.is_file() else []
        name = " ".join(info.name.removesuffix(".dist-info").split("-")[:2])
        if tags and not tags[0].endswith("-any"):
            native.append(f"{name} [{tags[-1].rsplit('-', 1)[-1]}]")
        else:
            pure.append(name)
    return [", ".join(native) or "none", ", ".join(pure) or "none"]


def elf_machine(path: Path) -> int | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
