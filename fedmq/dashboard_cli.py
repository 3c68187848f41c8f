"""``fedmq dashboard`` (the live page and /metrics), ``fedmq dashboard passwd`` and
``fedmq status`` (the same state once, as text)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any


def cmd_dashboard(args: argparse.Namespace) -> int:
    from fedmq.protocol.errors import ConfigError

    if args.what == "passwd":
        return _passwd(args)
    if args.users_file or args.user or args.password_stdin:
        raise ConfigError("--users-file, --user and --password-stdin go with dashboard passwd; "
                          "the page's login is [dashboard] users_file in dashboard.toml")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not in 0..65535")
    if args.run:
        return _serve_run(args)
    from dataclasses import replace

    from fedmq.cli_shared import stop_on_sigterm
    from fedmq.dashboard.config import DashboardConfig
    from fedmq.dashboard.service import Dashboard
    from fedmq.runtime.config import is_loopback

    config = DashboardConfig.from_file(args.config)
    config = replace(config, bind=args.bind or config.bind,
                     port=config.port if args.port is None else args.port)
    if not is_loopback(config.bind) and config.users_file is None:
        raise ConfigError(f"--bind {config.bind} is not a loopback address: the page needs a "
                          f"login ([dashboard] users_file in {args.config})")
    dashboard = Dashboard(config)
    stop = threading.Event()
    stop_on_sigterm(stop.set)
    server = dashboard.serve()
    print(f"dashboard: {server.url}  (Prometheus: {server.url}metrics)", flush=True)
    try:
        dashboard.run(stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


def _serve_run(args: argparse.Namespace) -> int:
    from fedmq.dashboard.rundir import load_run
    from fedmq.dashboard.server import DashboardServer
    from fedmq.protocol.errors import ConfigError
    from fedmq.runtime.config import is_loopback

    view = load_run(Path(args.run))
    bind = args.bind or "127.0.0.1"
    if not is_loopback(bind):
        raise ConfigError("--run serves only on a loopback address (no login for it)")
    server = DashboardServer(view.state, bind=bind, port=8780 if args.port is None
                             else args.port).start()
    print(f"dashboard of run {view.run['id']}: {server.url}", flush=True)
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _passwd(args: argparse.Namespace) -> int:
    from fedmq.dashboard.server import set_password
    from fedmq.protocol.errors import ConfigError

    if not args.users_file or not args.user:
        raise ConfigError("dashboard passwd needs --users-file FILE --user NAME")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else \
        getpass.getpass(f"password for {args.user}: ")
    if len(password) < 8:
        raise ConfigError("dashboard passwd: the password needs at least 8 characters")
    set_password(Path(args.users_file), args.user, password)
    print(f"{args.user} can log in to the dashboard ({args.users_file})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from fedmq.dashboard.config import DashboardConfig
    from fedmq.dashboard.service import Dashboard, served_state, status_lines
    from fedmq.protocol.errors import ConfigError
    from fedmq.runtime.connecting import BrokerUnavailable

    if not 0 < args.wait <= 600:
        raise ConfigError(f"--wait {args.wait:g}: give 0 < seconds <= 600")
    config = DashboardConfig.from_file(args.config)
    state = served_state(config)  # a running dashboard's, if one serves here
    if state is None:
        try:
            state = Dashboard(config, client_id=f"{config.client_id}-status-{os.getpid()}"
                              ).snapshot(args.wait)
        except BrokerUnavailable as exc:
            print(f"fedmq status: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(state, indent=1, allow_nan=False))
        return status_lines(state)[1]
    lines, code = status_lines(state)
    print("\n".join(lines))
    return code


def register(sub: Any) -> None:
    p = sub.add_parser("dashboard", help="the fleet's live page and Prometheus /metrics "
                       "(read-only), or a finished run's page (--run DIR)")
    p.add_argument("what", nargs="?", choices=["serve", "passwd"], default="serve",
                   help="serve (default), or passwd: add a login to a users file")
    p.add_argument("--config", default="dashboard.toml", help="dashboard TOML config")
    p.add_argument("--run", metavar="DIR", help="show a run directory instead (rounds.csv, "
                   "privacy.json, statistics.json; or a fedmq simulate output directory)")
    p.add_argument("--bind", metavar="ADDR", help="listen address (default: the config's, "
                   "127.0.0.1)")
    p.add_argument("--port", type=int, metavar="N", help="listen port (0: any free port)")
    g = p.add_argument_group("dashboard passwd")
    g.add_argument("--users-file", metavar="FILE", help="user:scrypt lines (made 0600)")
    g.add_argument("--user", metavar="NAME", help="the login to add or change")
    g.add_argument("--password-stdin", action="store_true", help="read the password from "
                   "standard input instead of asking")
    p.set_defaults(func=cmd_dashboard)
    s = sub.add_parser("status", help="the fleet's run, round and devices once, from the "
                       "broker (exit 1: the run failed, 2: no run or no broker)")
    s.add_argument("--config", default="dashboard.toml", help="dashboard TOML config (its "
                   "read-only login)")
    s.add_argument("--wait", type=float, default=3.0, metavar="S", help="seconds to wait for "
                   "the retained messages (default 3)")
    s.add_argument("--json", action="store_true", help="the state as JSON (the page's)")
    s.set_defaults(func=cmd_status)
