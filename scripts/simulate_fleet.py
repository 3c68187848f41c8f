#!/usr/bin/env python3
"""Simulate a whole fleet on this machine: a thin wrapper around ``fedmq simulate``.

    python scripts/simulate_fleet.py --agents 20 --rounds 10 --iid
"""

import sys

from fedmq.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
