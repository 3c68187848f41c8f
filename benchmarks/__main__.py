"""``python -m fedmq.benchmarks [options]``: the same as ``fedmq bench``."""

import sys

from fedmq.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
