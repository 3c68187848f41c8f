"""Why a connection to the broker failed, and how patiently to try again.

A device that boots before its gateway must keep trying (a Pi that gave up at
boot never joins), but a fleet must not hammer a gateway that is coming up,
and a mistake a retry cannot fix (wrong password, TLS on one side only) must
be named as such instead of hiding behind "connection refused" or a timeout.
No paho here: ``runtime.transport`` turns paho's failures into these errors.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fedmq.protocol.errors import FedmqError

log = logging.getLogger(__name__)


class BrokerUnavailable(FedmqError):
    """The broker cannot be reached or refused the connection."""

    # A retry alone cannot fix it: try again only now and then (someone may fix
    # the broker's password file or certificate meanwhile).
    slow = False


class BrokerUnreachable(BrokerUnavailable):
    """Nothing answered (yet): the gateway is down, booting, or the network is not up."""


class LoginRefused(BrokerUnavailable):
    """The broker answered and refused this user name / password or client id."""

    slow = True


class TlsMismatch(BrokerUnavailable):
    """TLS failed: certificate not trusted, or TLS on one side only."""

    slow = True


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff: ``first`` doubling to ``cap``, +-``jitter``."""

    first: float = 1.0
    cap: float = 60.0
    jitter: float = 0.2
    slow: float = 60.0  # for LoginRefused / TlsMismatch

    def delay(self, attempt: int, rng: random.Random, *, slow: bool = False) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = self.slow if slow else min(self.cap, self.first * 2.0 ** min(attempt - 1, 30))
        # Jitter so a fleet that lost its gateway at once does not come back at once.
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))


DEFAULT_BACKOFF = Backoff()


def unreachable(where: str, exc: OSError, timeout: float) -> BrokerUnreachable:
    """An OSError of the TCP connect as one line that says what it means."""
    if isinstance(exc, ConnectionRefusedError):
        why = "refused the connection (nothing listening)"
    elif isinstance(exc, socket.gaierror):
        why = f"cannot be resolved ({exc.strerror})"
    elif isinstance(exc, TimeoutError | socket.timeout):
        why = f"did not answer within {timeout:g} s (down, or a firewall drops packets)"
    elif exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        why = f"is unreachable ({exc.strerror}; is the network up?)"
    else:
        why = f"failed: {exc}"
    return BrokerUnreachable(f"broker {where} {why}")


def tls_failed(where: str, exc: ssl.SSLError | OSError) -> TlsMismatch:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsMismatch(f"broker {where}: TLS certificate not accepted ({exc.verify_message}); "
                           f"check [mqtt] ca_file and that the certificate names this host")
    return TlsMismatch(f"broker {where}: TLS handshake failed ({exc}); is it a plain MQTT port? "
                       f"set [mqtt] tls = false or use the broker's TLS port")


def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if ``host:port`` completes a TLS handshake (certificate not checked).

    Asked only after a plain MQTT CONNECT got no CONNACK: that is what a TLS
    listener does with plain MQTT, and without this check the user sees a
    timeout that points nowhere.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe: nothing is sent over it
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ValueError):
        return False


def plain_on_tls(where: str) -> TlsMismatch:
    return TlsMismatch(f"the broker at {where} did not answer MQTT but speaks TLS: is it a TLS "
                       f"port? set [mqtt] tls = true (and ca_file)")


def retry(attempt_once: Callable[[], None], *, where: str, stop: threading.Event,
          attempts: int = 0, backoff: Backoff = DEFAULT_BACKOFF,
          rng: random.Random | None = None) -> bool:
    """Call ``attempt_once`` until it succeeds (True) or ``stop`` is set (False).

    ``attempts`` > 0 gives up after that many failures by raising the last
    error; 0 tries for ever. One log line per failure says why and when next.
    """
    rng = rng or random.Random()
    failures = 0
    while not stop.is_set():
        try:
            attempt_once()
        except BrokerUnavailable as exc:
            failures += 1
            if attempts and failures >= attempts:
                raise BrokerUnavailable(
                    f"cannot reach MQTT broker {where} after {failures} attempt"
                    f"{'s' if failures > 1 else ''}: {exc}") from exc
            wait = backoff.delay(failures, rng, slow=exc.slow)
            log.log(logging.ERROR if exc.slow else logging.WARNING,
                    "%s; retry %d in %.1f s", exc, failures + 1, wait)
            stop.wait(wait)
        else:
            if failures:
                log.info("connected to broker %s after %d failed attempt%s", where, failures,
                         "s" if failures > 1 else "")
            return True
    return False
