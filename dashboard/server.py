"""The dashboard's HTTP side: the page, its JSON state and /metrics, with an optional login.

Standard library only (``http.server``), one thread per request. The page and
its chart library are files of the package (no CDN: gateways are often offline).
On a loopback address there is no login; any other address needs a users file
(``user:scrypt$...`` lines, ``fedmq dashboard passwd``) and HTTP Basic auth, which
sends the password in the clear: put TLS in front (a reverse proxy) off the LAN.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedmq.dashboard.prom import registry_for
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.files import write_text_atomic

log = logging.getLogger("fedmq.dashboard")

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
# The page loads only its own files; nothing inline, nothing from elsewhere.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                      "frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MB and ~70 ms a check: one at a time (below)
MAX_CONNECTIONS = 32  # at once; more are closed unanswered (a page polls with one or two)
IDLE_SECONDS = 10.0  # a connection that sends nothing for this long is closed
LOGIN_CACHE_SECONDS = 300.0  # a checked Authorization header is not hashed again meanwhile
_DUMMY = "scrypt$" + base64.b64encode(bytes(16)).decode() + "$" + base64.b64encode(
    bytes(32)).decode()  # hashed for unknown users: a wrong name costs what a wrong password does


def static_files() -> dict[str, bytes]:
    """The page's files by URL path (read once: they are the package's own)."""
    folder = resources.files("fedmq.dashboard") / "static"
    files = {f"/{f.name}": f.read_bytes() for f in folder.iterdir()
             if f.is_file() and Path(f.name).suffix in TYPES}
    files["/"] = files["/index.html"]
    return files


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def check_password(stored: str, password: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                             dklen=len(want), **SCRYPT)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


def read_users(path: str) -> dict[str, str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard users file {path}: {exc.strerror}") \
            from exc
    users = {}
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.startswith("#"):
            name, sep, stored = line.strip().partition(":")
            if not sep or not name or not stored.startswith("scrypt$"):
                raise ConfigError(f"{path}:{number}: not a 'user:scrypt$...' line (make the "
                                  "file with fedmq dashboard passwd)")
            users[name] = stored
    if not users:
        raise ConfigError(f"{path}: no users (add one with fedmq dashboard passwd)")
    return users


def set_password(path: Path, user: str, password: str) -> None:
    """Add or replace ``user`` in a users file (0600)."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise ConfigError(f"dashboard user name {user!r}: no colon or spaces, not empty")
    users = read_users(str(path)) if path.exists() else {}
    users[user] = hash_password(password)
    write_text_atomic(path, "".join(f"{u}:{h}\n" for u, h in users.items()), private=True)


class _BoundedServer(ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONNECTIONS``; a client that hangs up or
    times out is not worth a traceback."""

    daemon_threads = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kw)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("more than %d connections: closing one from %s", MAX_CONNECTIONS,
                      client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended badly", client_address, exc_info=True)


class DashboardServer:
    """Serves ``state()`` as the page, ``/api/state`` and ``/metrics`` on ``bind:port``."""

    def __init__(self, state: Callable[[], dict[str, Any]], *, bind: str = "127.0.0.1",
                 port: int = 8780, users: dict[str, str] | None = None) -> None:
        self._files, self._state, self._users = static_files(), state, users
        self._registry = registry_for(state)
        self._hashing = threading.Lock()  # scrypt checks one at a time (memory, CPU)
        self._logins: dict[str, float] = {}  # checked Authorization header digest -> until
        handler = self._handler()
        if not 0 <= port <= 65535:
            raise ConfigError(f"dashboard port {port} is not in 0..65535")
        try:
            self._httpd = _BoundedServer((bind, port), handler)
        except (OSError, OverflowError) as exc:
            raise ConfigError(f"cannot serve the dashboard on {bind}:{port}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from exc
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="dashboard-http",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "fedmq-dashboard"
            timeout = IDLE_SECONDS  # socket timeout: an idle or trickling client is dropped

            def version_string(self) -> str:
                return self.server_version

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def do_GET(self) -> None:
                if not server._authorized(self.headers.get("Authorization", "")):
                    self._send(401, b"login required\n", "text/plain; charset=utf-8",
                               {"WWW-Authenticate": 'Basic realm="fedmq", charset="UTF-8"'})
                    return
                path = self.path.split("?", 1)[0]
                if path == "/api/state":
                    body = json.dumps(server._state(), allow_nan=False).encode()
                    self._send(200, body, "application/json", {"Cache-Control": "no-store"})
                elif path == "/metrics":
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif path in server._files:
                    name = "/index.html" if path == "/" else path
                    self._send(200, server._files[path], TYPES[os.path.splitext(name)[1]])
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, kind: str,
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for key, value in {**HEADERS, "Content-Type": kind,
                                   "Content-Length": str(len(body)), **(extra or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _authorized(self, header: str) -> bool:
        if self._users is None:
            return True
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or len(encoded) > 1024:
            return False
        # A page polls every second: a header checked a moment ago is not hashed again.
        digest = hashlib.sha256(encoded.encode()).hexdigest()
        now = time.monotonic()
        if self._logins.get(digest, 0.0) > now:
            return True
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, binascii.Error):
            return False
        with self._hashing:
            ok = check_password(self._users.get(user, _DUMMY), password) and user in self._users
        if ok:
            if len(self._logins) > 1024:
                self._logins = {d: t for d, t in self._logins.items() if t > now}
            self._logins[digest] = now + LOGIN_CACHE_SECONDS
        return ok
