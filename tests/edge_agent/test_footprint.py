"""The device install stays light: running an agent imports no broker and no plotting."""

from __future__ import annotations

import os
import subprocess
import sys


def test_agent_imports_no_gateway_dependencies():
    code = ("import sys, edge_agent.agent, fedmq.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('amqtt', 'matplotlib', 'sklearn', 'aggregator', 'broker')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
