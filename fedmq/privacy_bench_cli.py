"""``fedmq bench-privacy``: the privacy-utility table (benchmarks.privacy)."""

from __future__ import annotations

import argparse


def cmd_bench_privacy(args: argparse.Namespace) -> int:
    from benchmarks.privacy import cmd_bench_privacy as run  # scikit-learn, dp-accounting

    return run(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from benchmarks import privacy

    p = sub.add_parser("bench-privacy", help="privacy-utility table: accuracy at epsilon "
                       "1, 3, 8 and without DP, synthetic fleet and a real data set",
                       description=privacy.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    privacy.add_arguments(p)
    p.set_defaults(func=cmd_bench_privacy)
