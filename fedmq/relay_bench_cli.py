"""``fedmq bench-relay``: two relays against the single gateway (benchmarks.relay)."""

from __future__ import annotations

import argparse


def cmd_bench_relay(args: argparse.Namespace) -> int:
    from benchmarks.relay import cmd_bench_relay as run

    return run(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    from benchmarks import relay

    p = sub.add_parser("bench-relay", help=help_text,
                       description=relay.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    relay.add_arguments(p)
    p.set_defaults(func=cmd_bench_relay)
