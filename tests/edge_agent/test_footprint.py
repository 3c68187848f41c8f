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


def test_fedmq_agent_imports_only_what_a_csv_agent_runs(tmp_path):
    # Each of these cost the device's 60 MB RSS budget without being used: the other
    # commands' modules (~1.4 MB), sqlite3 for a CSV agent (~0.8 MB), click through phe's
    # own command-line tool (~1 MB, where click is installed: here).
    code = ("import sys\nfrom fedmq.cli import main\n"
            "main(['agent', '--config', 'missing.toml'])\n"
            "print(sorted({m.split('.')[0] if not m.startswith('fedmq.') else m for m in "
            "sys.modules if m.split('.')[0] in ('click', 'sqlite3') or m in ("
            "'fedmq.simulate_cli', 'fedmq.gateway_cli', 'fedmq.dashboard_cli', "
            "'fedmq.model_cli', 'fedmq.provision', 'fedmq.trustee_cli', 'fedmq.relay_cli')}), "
            "'fedmq.edge_agent.agent' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "[] True", out.stdout + out.stderr
