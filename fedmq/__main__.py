"""``python -m fedmq``: the same as the ``fedmq`` command."""

import sys

from fedmq.cli import main

sys.exit(main())
