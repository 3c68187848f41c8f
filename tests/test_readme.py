"""The README and the docs are executable: every shell block outside the Quick start runs.

Each ``sh`` (or ``bash``) block of a section, keyed by (file, heading) over README.md and
every docs/*.md page, is run, in order, by bash in a fresh copy of the checkout (a
temporary directory, the test venv's ``bin`` first on PATH), on 127.0.0.1 only.
Background jobs a block starts (``&``) are killed with the block's process group
afterwards. A section with a shell block but no test here fails
``test_every_shell_block_is_run``, so no documented command goes untested. The Quick
start's commands are what CI runs itself; its sample output is checked against the shape
of what the simulation prints now (``test_quick_start_sample_has_the_simulations_shape``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedmq.broker.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(?:sh|bash)\n(.*?)^```", re.M | re.S)
HEADING = re.compile(r"^(#{2,3}) (.+)$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
README = "README.md"
NOT_RUN = {(README, "Quick start")}  # `make demo` and `make test` are what CI itself runs

Section = tuple[str, str]  # (file relative to the checkout, heading)


def pages() -> list[str]:
    """README.md and every docs page, as paths relative to the checkout."""
    return [README, *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def headings(text: str) -> list[re.Match[str]]:
    """The ## and ### headings of a page, not the lines of a fenced block that look like one."""
    fenced = [(m.start(), m.end()) for m in FENCE.finditer(text)]
    return [h for h in HEADING.finditer(text)
            if not any(a <= h.start() < b for a, b in fenced)]


def section_spans(page: str) -> dict[str, tuple[int, int]]:
    text = (ROOT / page).read_text()
    heads = headings(text)
    spans: dict[str, tuple[int, int]] = {}
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        spans[head.group(2).strip()] = (head.end(), end)
    return spans


def sections() -> dict[Section, list[str]]:
    """(page, heading) -> the shell blocks directly under it (before the next heading)."""
    found: dict[Section, list[str]] = {}
    for page in pages():
        text = (ROOT / page).read_text()
        for title, (start, end) in section_spans(page).items():
            blocks = BLOCK.findall(text, start, end)
            if blocks:
                assert (page, title) not in found, f"{page}: two sections named {title!r}"
                found[(page, title)] = blocks
    return found


def section_text(page: str, title: str) -> str:
    start, end = section_spans(page)[title]
    return (ROOT / page).read_text()[start:end]


def checkout_copy(dest: Path) -> Path:
    """The checkout as a new user has it: sources, no run state; the test venv as .venv."""
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "state", "data", "__pycache__",
                                    ".*_cache", ".hypothesis", "build", "*.egg-info")
    shutil.copytree(ROOT, dest, ignore=ignore)
    (dest / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return dest


@dataclass
class Ran:
    cwd: Path
    stdout: str
    stderr: str


def run_section(key: Section, tmp_path: Path, *, timeout: float, before: str = "",
                after: str = "", replace: dict[str, str] | None = None) -> Ran:
    """Run the section's blocks; ``before`` is setup the text presupposes, ``after`` what
    the text says in words rather than in a block (both shown in the test)."""
    where = f"{key[0]} section {key[1]!r}"
    script = "\n".join(sections()[key])
    for old, new in (replace or {}).items():
        assert old in script, f"{where} no longer contains {old!r}"
        script = script.replace(old, new)
    script = f"{before}\n{script}\n{after}"
    cwd = checkout_copy(tmp_path / "checkout")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{where} did not finish in {timeout} s\n{out}\n{err}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # background jobs the blocks started
            os.killpg(proc.pid, signal.SIGTERM)
    assert proc.returncode == 0, f"{where} failed\n{out}\n{err}"
    return Ran(cwd, out, err)


TESTED: set[Section] = set()


def section_test(page: str, title: str):  # type: ignore[no-untyped-def]
    TESTED.add((page, title))
    return pytest.mark.slow


def test_every_shell_block_is_run() -> None:
    assert set(sections()) - NOT_RUN == TESTED


def test_every_docs_page_is_scanned() -> None:
    # The pages the site builds are the pages whose blocks run here.
    assert "docs/deployment.md" in pages() and len(pages()) > 2, pages()


# -- README.md --------------------------------------------------------------------------

USE_THE_MODEL = (README, "Use the model")


@section_test(*USE_THE_MODEL)
def test_use_the_model(tmp_path: Path) -> None:
    ran = run_section(USE_THE_MODEL, tmp_path, timeout=180, before=(
        # "after make demo": a small one, so the test stays quick
        "fedmq simulate --agents 4 --rounds 2 --key-bits 512 --no-plot >/dev/null"))
    assert re.search(r"scikit-learn and ONNX agree on 100.0% of \d+ rows", ran.stdout), ran.stdout
    assert "accuracy" in ran.stdout
    for name in ("model.joblib", "model.onnx", "model.json"):
        assert (ran.cwd / "runs" / "export" / name).stat().st_size > 0
    predictions = (ran.cwd / "runs" / "export" / "predictions.csv").read_text().splitlines()
    assert predictions[0].startswith("row,ts,prediction,p_0,p_1,model,run,version")
    # the model's run (its directory under runs/) and version: 2 rounds
    assert len(predictions) > 10 and re.search(r",global,\d{8}-\d{6}-[0-9a-f]{4},2$",
                                               predictions[1]), predictions[:2]


def skeleton(line: str) -> str:
    """A line of simulation output with what varies from run to run taken out: run ids,
    fingerprints, numbers (ports, counts, losses, times) and runs of spaces."""
    line = re.sub(r"\d{8}-\d{6}-[0-9a-f]{4}", "RUN", line)
    line = re.sub(r"\b[0-9a-f]{16,}\b", "HEX", line)
    line = re.sub(r"[+-]?\d+(?:\.\d+)?", "#", line)
    return re.sub(r"\s+", " ", line).strip()


def shape(lines: list[str]) -> list[str]:
    """The skeletons in order, the elided middle (``...``) dropped and a run of lines of
    one skeleton (the round lines) counted once: the line kinds and their columns."""
    out: list[str] = []
    for line in lines:
        if line.strip() in ("", "..."):
            continue
        s = skeleton(line)
        if not out or out[-1] != s:
            out.append(s)
    return out


def quick_start_sample() -> list[str]:
    text = section_text(README, "Quick start")
    samples = [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
               if not m.group(1)]  # the sh block of the two commands has a language
    assert len(samples) == 1, "the Quick start should show one sample of make demo's output"
    return samples[0].splitlines()


@pytest.mark.slow
def test_quick_start_sample_has_the_simulations_shape(tmp_path: Path) -> None:
    # The README shows `make demo` (20 agents x 10 rounds, 2048 bits, 2 worker processes on
    # the 2-core machine it was run on); the same kinds of lines, columns and order come
    # from a small fleet. --workers 2 as there: the header names the worker processes.
    proc = subprocess.run(
        [Path(sys.executable).parent / "fedmq", "simulate", "--agents", "3", "--rounds", "2",
         "--key-bits", "512", "--workers", "2"],  # the plot too: the last line names it
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.splitlines()
    assert sum(line.startswith("round ") for line in printed) == 2, proc.stdout
    sample = quick_start_sample()
    assert "..." in sample  # the middle rounds are elided, as the text says
    assert shape(sample) == shape(printed), (
        "README's Quick start sample no longer has the shape of what `fedmq simulate` "
        "prints: run `make demo` and paste its output (middle rounds as ...)\n"
        + "\n".join(printed))


# -- docs/deployment.md -----------------------------------------------------------------

DEPLOY = "docs/deployment.md"
INSTALLING = (DEPLOY, "Installing")


@section_test(*INSTALLING)
def test_installing(tmp_path: Path) -> None:
    ran = run_section(INSTALLING, tmp_path, timeout=300)
    assert "usage: fedmq agent" in ran.stdout
    venv = ran.cwd / "build" / "device-venv"
    probe = subprocess.run([venv / "bin" / "python", "-c", "import sklearn"],
                           capture_output=True, text=True)
    assert probe.returncode != 0  # the device install has no scikit-learn


def agents_finished(cwd: Path, bundle: Path, devices: list[str]) -> None:
    for device in devices:
        assert (bundle / device / "state" / "final_model.npz").exists(), (
            (cwd / f"{device}.log").read_text() if (cwd / f"{device}.log").exists() else device)


ONE_MACHINE = (DEPLOY, "Try it on one machine (loopback, TLS and logins on)")


@section_test(*ONE_MACHINE)
def test_try_it_on_one_machine(tmp_path: Path) -> None:
    # A port of its own: another broker on 8883 (a helper, CI) would hang the agents.
    ran = run_section(ONE_MACHINE, tmp_path, timeout=240,
                      replace={"--device-count 3": f"--device-count 3 --port {free_port()}"})
    assert "note:" not in ran.stdout, ran.stdout
    agents_finished(ran.cwd, ran.cwd / "gw" / "devices", ["dev-000", "dev-001", "dev-002"])
    assert "round 2 closed" in ran.stderr, ran.stderr[-3000:]
    # fedmq status through the dashboard's read-only login, over TLS: the finished run.
    assert re.search(r"^fleet \S+, run \S+: finished$", ran.stdout, re.M), ran.stdout
    assert "final model: fleet loss" in ran.stdout, ran.stdout  # the retained metrics


ONE_GATEWAY = (DEPLOY, "One gateway and N devices")
FEATURES = '["vibration_rms", "temperature_c", "current_a", "rpm"]'


@section_test(*ONE_GATEWAY)
def test_one_gateway_and_n_devices(tmp_path: Path) -> None:
    devices = ["dev-000", "dev-001", "dev-002"]
    # Each agent's pid, kept when it starts: `jobs -p` after the aggregator ends misses
    # an agent that exited already and then names the broker, which never ends.
    run_devices = "\n".join(
        f"fedmq agent --config plant/devices/{d}/agent.toml > {d}.log 2>&1 & "
        "agents=\"${agents:-} $!\"" for d in devices)
    ran = run_section(
        ONE_GATEWAY, tmp_path, timeout=300,
        # One machine plays gateway and devices: the gateway's address is loopback.
        replace={"--san IP:192.168.1.10": "--san IP:127.0.0.1",
                 "--device-count 3": f"--device-count 3 --port {free_port()}"},
        after="\n".join([
            # "put the device's readings next to agent.toml as data.csv", and the other
            # devices print their key lines like dev-000 (the block shows one device)
            *(f"cp data/{d}.csv plant/devices/{d}/data.csv" for d in devices),
            *(f"fedmq agent --config plant/devices/{d}/agent.toml --show-public-key --csv "
              ">> plant-keys.csv" for d in devices[1:]),
            "fedmq enroll --config plant/aggregator.toml --from-file plant-keys.csv",
            # "Then run fedmq broker ... and fedmq aggregator ... on the gateway and
            # fedmq agent ... on each device"
            "fedmq broker --config plant/broker.toml > broker.log 2>&1 &",
            run_devices,
            "sed -i 's/^rounds = .*/rounds = 2/' plant/aggregator.toml",
            "fedmq aggregator --config plant/aggregator.toml",
            "wait $agents",
        ]))
    assert ("of 'fault' from 4 features ('vibration_rms', 'temperature_c', 'current_a', "
            "'rpm')") in ran.stdout, ran.stdout
    agents_finished(ran.cwd, ran.cwd / "plant" / "devices", devices)
    # --data-sample wrote the sample's columns into every config, init device's too
    assert f"features = {FEATURES}" in (ran.cwd / "plant" / "aggregator.toml").read_text()
    for device in [*devices, "dev-003"]:
        agent = (ran.cwd / "plant" / "devices" / device / "agent.toml").read_text()
        assert f"features = {FEATURES}" in agent and 'label = "fault"' in agent, agent


TRUSTEES = (DEPLOY, "No single party can decrypt: trustees")


@section_test(*TRUSTEES)
def test_trustees(tmp_path: Path) -> None:
    devices = ["dev-000", "dev-001", "dev-002"]
    ran = run_section(
        TRUSTEES, tmp_path, timeout=300,
        # a port of its own (another broker may hold 8883), and a 1024-bit key to deal fast
        replace={"--device-count 3": f"--device-count 3 --port {free_port()} --bits 1024",
                 "fedmq aggregator --config vault/aggregator.toml":
                 "sed -i 's/^round_timeout = .*/round_timeout = 20/' vault/aggregator.toml\n"
                 "fedmq aggregator --config vault/aggregator.toml"},
        # the agents save the final model once they hear "finished"
        after="for _ in $(seq 100); do [ $(ls vault/devices/*/state/final_model.npz "
              "2>/dev/null | wc -l) = 3 ] && break; sleep 0.1; done")
    assert "the gateway holds no private key" in ran.stdout, ran.stdout
    assert not any("paillier" in p.name for p in (ran.cwd / "vault").rglob("*"))
    agents_finished(ran.cwd, ran.cwd / "vault" / "devices", devices)
    assert "round 3 closed (all)" in ran.stderr, ran.stderr[-3000:]
    for trustee in ("trustee-1", "trustee-2", "trustee-3"):
        log = (ran.cwd / f"{trustee}.log").read_text()
        # (a trustee started before the broker listens says so, and retries: not asserted)
        assert "refused to decrypt" not in log and "ERROR" not in log, log
    served = sum((ran.cwd / f"{t}.log").read_text().count("partially decrypted the sum of 3")
                 for t in ("trustee-1", "trustee-2", "trustee-3"))
    assert served >= 2 * 5, served  # statistics, 3 rounds, final evaluation: 2 of 3 each


SIM_TRUSTEES = ("docs/simulation.md", "Trustees")


@section_test(*SIM_TRUSTEES)
def test_simulation_with_trustees(tmp_path: Path) -> None:
    ran = run_section(SIM_TRUSTEES, tmp_path, timeout=300)
    assert "every decryption needs 2 of them" in ran.stdout, ran.stdout
    assert re.search(r"^final accuracy: federated 0\.9", ran.stdout, re.M), ran.stdout
    assert (ran.cwd / "runs" / "latest" / "trustees" / "trustee-1" / "share.json").exists()
    assert "waiting for trustee" not in ran.stderr and "ERROR" not in ran.stderr, ran.stderr


DASHBOARD = ("docs/dashboard.md", "A simulated fleet, live and afterwards")


@section_test(*DASHBOARD)
def test_dashboard_of_a_simulated_run(tmp_path: Path) -> None:
    ran = run_section(DASHBOARD, tmp_path, timeout=300, replace={"8780": str(free_port())})
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/ \(live", ran.stdout, re.M), ran.stdout
    closed = re.search(r'^fedmq_rounds_closed_total\{phase="training"\} 5\.0$', ran.stdout, re.M)
    assert closed and "fedmq_fleet_accuracy 0.9" in ran.stdout, ran.stdout
    assert "Traceback" not in ran.stderr, ran.stderr


SECURING = (DEPLOY, "Securing the gateway broker")


@section_test(*SECURING)
def test_mosquitto_config(tmp_path: Path) -> None:
    ran = run_section(SECURING, tmp_path, timeout=120, before=(
        "fedmq init gateway plant --fleet plant --device-count 3 --bits 512 > /dev/null"))
    out = ran.cwd / "plant" / "mosquitto"
    for name in ("mosquitto.conf", "acl", "passwords", "credentials.txt"):
        assert (out / name).stat().st_size > 0
    assert "dev-002" in (out / "credentials.txt").read_text()


# -- docs/benchmarks.md -----------------------------------------------------------------

REAL_DATA = ("docs/benchmarks.md", "Real data sets")


@section_test(*REAL_DATA)
def test_real_data_sets(tmp_path: Path) -> None:
    ran = run_section(REAL_DATA, tmp_path, timeout=300)
    rows = {line.split()[0]: line.split() for line in ran.stdout.splitlines()
            if line.split()[:1] and line.split()[0] in ("wine", "breast_cancer", "diabetes")
            and len(line.split()) > 6}
    assert set(rows) == {"wine", "breast_cancer", "diabetes"}, ran.stdout
    for cells in rows.values():
        assert cells[1] == "none"  # no center/scale in the config: the statistics round
        tolerance = 0.05 if cells[2] == "r2" else 0.03
        assert float(cells[5]) <= tolerance, ran.stdout  # the gap to centralized sklearn


NON_IID = ("docs/benchmarks.md", "Non-IID fleets")


@section_test(*NON_IID)
def test_non_iid_fleets(tmp_path: Path) -> None:
    ran = run_section(NON_IID, tmp_path, timeout=300)
    assert "## Rounds to target" in ran.stdout and "| wine" in ran.stdout, ran.stdout
    out = ran.cwd / "bench-noniid"
    assert (out / "noniid.md").is_file() and (out / "noniid.png").stat().st_size > 10_000


# -- docs/privacy.md --------------------------------------------------------------------

PRIVACY = "docs/privacy.md"
DIFFERENTIAL_PRIVACY = (PRIVACY, "Differential privacy")


def _privacy_row(task: str, epsilon: str) -> list[str]:
    """The cells of the privacy page's measured table row for ``task`` at ``epsilon``."""
    for line in section_text(PRIVACY, "Measured").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0].startswith(task) and cells[1] == epsilon:
            return cells
    raise AssertionError(f"{PRIVACY}'s measured table has no row {task!r} at {epsilon}")


@section_test(*DIFFERENTIAL_PRIVACY)
def test_differential_privacy(tmp_path: Path) -> None:
    ran = run_section(DIFFERENTIAL_PRIVACY, tmp_path, timeout=240)
    rows = re.findall(r"^(round +\d+/10|final) .*accuracy +([0-9.]+) .*epsilon +([0-9.]+)",
                      ran.stdout, re.M)
    assert len(rows) == 11, ran.stdout  # 10 rounds and the final model
    spent = [float(eps) for _, _, eps in rows]
    assert spent == sorted(spent) and 0 < spent[-1] <= 3.0, ran.stdout
    # The page's measured row for this very command: accuracy min-max over its repeats.
    cells = _privacy_row("synthetic fault (20 devices)", "3")
    low = float(re.match(r"[0-9.]+ \(([0-9.]+)-", cells[2]).group(1))  # type: ignore[union-attr]
    assert float(rows[-1][1]) >= low - ACCURACY_SLACK, (cells, ran.stdout)
    assert float(cells[3]) == pytest.approx(spent[-1], abs=1e-3)  # same accountant, same run


# Fresh noise each run (OS entropy), so this cannot be exact, and the spread has a heavy
# lower tail: 100 runs of the same settings (1024-bit keys; the noise does not depend on
# them) gave mean 0.895, sd 0.026, lowest 0.798; one CI run reached 0.781, 4.4 sd under the
# mean. With the page's worst of 5 (0.863) - 0.05, 2 of 122 runs failed; - 0.11 (0.753)
# is below every run seen. Epsilon, the exact claim of the section, is checked exactly.
ACCURACY_SLACK = 0.11
