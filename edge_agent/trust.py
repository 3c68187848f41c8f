"""Which aggregator keys this agent trusts: pinned in its config, in use, or remembered.

Trust on first use, written to the agent's state_dir, unless both keys are pinned.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedmq.edge_agent.config import AgentConfig
from fedmq.protocol.errors import FedmqError
from fedmq.protocol.messages import PubKeyMessage
from fedmq.runtime.files import write_atomic

log = logging.getLogger("fedmq.edge_agent.agent")


class UntrustedKey(FedmqError):
    """The announced public key is not the one this agent pinned or first trusted."""


class TrustedKeys:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    def check(self, fp: str, signing_key: str,
              announced: PubKeyMessage | None) -> dict[str, str]:
        """Check an announcement against pinned, in-use and remembered keys.

        Raise UntrustedKey if it contradicts any of them; otherwise return the
        keys to remember (trust on first use). The Paillier key protects
        updates, the signing key the model and rounds; the announcement is
        signed by the signing key it names. So a pinned signing key vouches for
        the fingerprint, but a pinned fingerprint vouches for nothing: anyone
        can copy the modulus and sign it with a key of their own. That signing
        key is trusted for this process only and never remembered, and a later
        announcement of the pinned fingerprint under another signing key
        replaces it (the aggregator puts its genuine announcement back).
        """
        cfg = self.config
        unauthenticated = (cfg.key_fingerprint is not None and cfg.aggregator_signing_key is None
                           and not self.remembered("aggregator_signing_key"))
        checks = {
            "key_fingerprint": (fp, cfg.key_fingerprint or (
                announced.fingerprint if announced else None)
                or self.remembered("key_fingerprint")),
            "aggregator_signing_key": (signing_key, cfg.aggregator_signing_key or (
                announced.signing_key if announced and not unauthenticated else None)
                or self.remembered("aggregator_signing_key")),
        }
        for name, (value, trusted) in checks.items():
            if trusted is not None and value != trusted:
                raise UntrustedKey(
                    f"REFUSING aggregator {name} {value[:16]}...: this agent trusts "
                    f"{trusted[:16]}... (pinned or first seen). Nothing will be sent under it.")
        remember = {}
        for name, (value, trusted) in checks.items():
            if trusted is not None:
                continue
            log.warning(
                "TRUST ON FIRST USE: no %s pinned in the agent config; trusting the "
                "aggregator's %s... Pin it under [fleet] %s so a rogue broker cannot "
                "substitute its own.", name, value[:16], name)
            if not (unauthenticated and name == "aggregator_signing_key"):
                remember[name] = value
        return remember

    def remembered(self, name: str) -> str | None:
        path = self.state_file(f"trusted_{name}")
        if path is None or not path.exists():
            return None
        return path.read_text().strip() or None

    def state_file(self, name: str) -> Path | None:
        return Path(self.config.state_dir) / name if self.config.state_dir else None

    def remember(self, keys: dict[str, str]) -> None:
        for name, value in keys.items():
            if (path := self.state_file(f"trusted_{name}")) is not None:
                write_atomic(path, (value + "\n").encode())
