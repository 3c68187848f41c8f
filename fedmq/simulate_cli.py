"""``fedmq simulate``'s flags for fleets that scale: workers, broker, connect spread,
spare sensor channels (a wider model)."""

from __future__ import annotations

import argparse
import signal
from typing import Any


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int,
                   help="worker processes the agents are sharded over (default: the number "
                   "of CPUs; 0: threads of this process)")
    p.add_argument("--broker",
                   help="embedded (fedmq's amqtt broker, default), mosquitto (started on a "
                   "free loopback port with a generated config) or HOST:PORT (running)")
    p.add_argument("--connect-spread", type=float, metavar="SECONDS",
                   help="the agents of each worker first connect over this many seconds "
                   "(default: 5 ms per agent)")
    p.add_argument("--spare-sensors", type=int, metavar="K",
                   help="K extra uninformative sensor channels per device (spare_00..): a "
                   "wider model, d = 5 + K for the fault task (default 0)")


def scale_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in {"workers": args.workers, "broker": args.broker,
                              "connect_spread": args.connect_spread,
                              "spare_sensors": args.spare_sensors}.items() if v is not None}


def interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: the run's Mosquitto, broker and worker processes are
    stopped by the ``with`` blocks that started them (killed, the run left Mosquitto
    running on its port)."""
    def handler(_sig: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
