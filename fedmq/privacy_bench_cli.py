"""``fedmq bench-privacy``: the privacy-utility table (benchmarks.privacy)."""

from __future__ import annotations

import argparse


def cmd_bench_privacy(args: argparse.Namespace) -> int:
    from benchmarks.privacy import cmd_bench_privacy as run  # scikit-learn, dp-accounting

    return run(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    from benchmarks import privacy

    p = sub.add_parser("bench-privacy", help=help_text,
                       description=privacy.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    privacy.add_arguments(p)
    p.set_defaults(func=cmd_bench_privacy)
