"""Optional dependencies ("extras"): which command needs which, and the one line that says so.

``pip install fedmq`` installs what a device needs to run ``fedmq agent`` and nothing
more (a Pi's SD card and RAM are small). The gateway's broker, the simulation
and its plots, and scikit-learn live in extras; a command that needs one says
which in one line instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib.util
import sys

from fedmq.protocol.errors import FedmqError

# Top-level module -> the extra that installs it.
EXTRA_OF = {
    "amqtt": "gateway", "pwdlib": "gateway", "argon2": "gateway", "matplotlib": "gateway",
    "sklearn": "sklearn", "scipy": "sklearn", "joblib": "sklearn",
    "skl2onnx": "onnx", "onnxruntime": "onnx", "prometheus_client": "gateway",
}

# Command -> (extra, the modules it imports). Checked before the command starts, so
# `fedmq simulate` does not make a key first and fail later.
_NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "broker": ("gateway", ("amqtt", "pwdlib")),
    "simulate": ("gateway", ("amqtt", "sklearn", "matplotlib")),
    "bench-flood": ("gateway", ("amqtt",)),
    "bench-storm": ("gateway", ("amqtt",)),  # it runs `fedmq broker`
    "bench-ingest": ("gateway", ("amqtt",)),  # it runs `fedmq broker` and an aggregator
    # gateway-side files: Argon2 password hashes, and locks for the allow-list/password file
    "init": ("gateway", ("pwdlib", "filelock")),
    "enroll": ("gateway", ("filelock",)),
    "trustee": ("gateway", ("filelock",)),  # its allow-list: enroll locks it; run reads it
    "dashboard": ("gateway", ("prometheus_client",)),  # its /metrics endpoint
}
# Subcommand actions that need no extra (they only write text files).
_LIGHT_ACTIONS = {("broker", "mosquitto-config")}


class MissingExtra(FedmqError):
    """A command needs an optional dependency that this install does not have."""


def install_hint(extra: str) -> str:
    return f'pip install "fedmq[{extra}]"'


def installed(module: str) -> bool:
    """True if ``module`` can be imported (without importing it: numpy-heavy, slow)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: import blocked on purpose
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _message(command: str, extra: str, missing: list[str]) -> str:
    what = ", ".join(missing)
    return (f"fedmq {command} needs the {extra} extra ({what} "
            f"{'is' if len(missing) == 1 else 'are'} not installed): {install_hint(extra)}")


def check(command: str, action: str | None = None) -> None:
    """Raise MissingExtra if ``command`` needs an extra this install lacks."""
    if (command, action) in _LIGHT_ACTIONS or command not in _NEEDS:
        return
    extra, modules = _NEEDS[command]
    missing = [m for m in modules if not installed(m)]
    if missing:
        raise MissingExtra(_message(command, extra, missing))


def explain(command: str, exc: ModuleNotFoundError) -> MissingExtra | None:
    """The one-line error for an optional module missing at run time; None for any other."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    return None if extra is None else MissingExtra(_message(command, extra, [top]))
