"""Versioned messages of the fedmq wire contract, and their (de)serialization.

Control messages (pubkey, round, status, metrics) are small JSON documents with
a ``schema`` field. The aggregator's (pubkey, round, metrics) carry an Ed25519
signature in ``sig``; agents verify it against the key they pinned. Updates are
binary (see ``protocol.wire``) because they are mostly ciphertexts. Nothing is
ever pickled: a payload from the broker is untrusted input, parsed field by field.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmq.models import ModelError, ModelSpec
from fedmq.models.augment import AUGMENTS
from fedmq.protocol.crypto.codec import CodecParams, make_codec
from fedmq.protocol.crypto.signing import (
    Ed25519PublicKey,
    Signer,
    public_key_from_hex,
    sign_document,
    verify_document,
)
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.health import Skip
from fedmq.protocol.holdings import Holdings
from fedmq.protocol.layout import PHASES, StatsCodec, contract_digest
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.server import ServerSettings as ServerSettings  # carried by rounds
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import check_name

MAX_CONTROL_BYTES = 4 * 1024 * 1024
# "statistics", "training", "evaluation": a working round of that phase (protocol.layout).
# "failed": the aggregator gave up the run (quorum not reached); a final message like
# "finished". Agents older than it reject the unknown state as a bad message and keep
# waiting, as they did before it existed.
ROUND_STATES = (*PHASES, "finished", "failed")
MAX_REASON = 500  # characters of a failed run's reason
AGENT_STATES = ("online", "offline")


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def loads(payload: bytes, schema: str) -> dict[str, Any]:
    """Parse a JSON control message and check its schema name and version."""
    if len(payload) > MAX_CONTROL_BYTES:
        raise ProtocolError(f"{schema} message of {len(payload)} bytes is too large")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not a JSON {schema} message: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProtocolError(f"{schema} message is not a JSON object")
    if doc.get("schema") != schema:
        raise ProtocolError(f"expected schema {schema!r}, got {doc.get('schema')!r}")
    return doc


def _get(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(key)
    # bool is an int in Python; never accept it where a number is meant.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"field {key!r} missing or not of type {kind}")
    return value


def _number(doc: dict[str, Any], key: str) -> float:
    value = float(_get(doc, key, (int, float)))
    if not math.isfinite(value):
        raise ProtocolError(f"field {key!r} is not finite")
    return value


@dataclass(frozen=True)
class PubKeyMessage:
    """The aggregator's Paillier public key and the codec contract bound to it."""

    fleet: str
    n_hex: str
    fingerprint: str
    codec: CodecParams
    signing_key: str
    statistics: StatsParams = field(default_factory=StatsParams)
    issued_at: float = field(default_factory=time.time)
    # Differential privacy the fleet applies (protocol.privacy.terms); absent on the wire if none.
    privacy: PrivacyTerms = field(default_factory=PrivacyTerms)

    SCHEMA = "fedmq.pubkey/3"

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        if len(self.fingerprint) != 64:
            raise ProtocolError("key fingerprint must be 64 hex characters")
        public_key_from_hex(self.signing_key)

    @property
    def contract_digest(self) -> str:
        """The digest rounds and updates must carry: both codecs and this key."""
        return contract_digest(self.codec, self.statistics, self.fingerprint, self.privacy)

    def layout(self) -> dict[str, dict[str, int]]:
        """Slot width and slots per ciphertext of each codec, derived from contract and key.

        Announced so an agent (or an operator reading the retained message) can
        check it derives the same layout before it encrypts anything.
        """
        try:
            n = int(self.n_hex, 16)
        except ValueError as exc:
            raise ProtocolError("public key modulus is not a hex string") from exc
        return {"training": make_codec(self.codec, n).describe(),
                "statistics": StatsCodec(self.statistics, n).describe()}

    def to_bytes(self, signer: Signer) -> bytes:
        if signer.public_hex != self.signing_key:
            raise ProtocolError("pubkey message must be signed by the key it announces")
        extra = {"privacy": self.privacy.to_dict()} if self.privacy.enabled else {}
        return sign_document({
            **extra, "schema": self.SCHEMA, "fleet": self.fleet, "n": self.n_hex,
            "fingerprint": self.fingerprint, "codec": self.codec.to_dict(),
            "statistics": self.statistics.to_dict(),
            "codec_digest": self.contract_digest, "layout": self.layout(),
            "signing_key": self.signing_key, "issued_at": self.issued_at,
        }, signer)

    @classmethod
    def from_bytes(cls, payload: bytes) -> PubKeyMessage:
        """Parse and check the self-signature; the caller compares keys with its pins."""
        doc = loads(payload, cls.SCHEMA)
        msg = cls(
            fleet=_get(doc, "fleet", str), n_hex=_get(doc, "n", str),
            fingerprint=_get(doc, "fingerprint", str),
            codec=CodecParams.from_dict(doc.get("codec")),
            statistics=StatsParams.from_dict(doc.get("statistics")),
            signing_key=_get(doc, "signing_key", str), issued_at=_number(doc, "issued_at"),
            privacy=PrivacyTerms.from_dict(doc.get("privacy")),
        )
        verify_document(doc, public_key_from_hex(msg.signing_key))
        if doc.get("codec_digest") != msg.contract_digest:
            raise ProtocolError("codec digest does not match the announced parameters")
        if doc.get("layout") != msg.layout():
            raise ProtocolError("announced slot layout does not follow from codec and key")
        return msg


@dataclass(frozen=True)
class TrainingSettings:
    """Hyperparameters of local training, chosen by the aggregator for each round."""

    # What `fedmq init` writes: on standardised features, enough local steps that devices
    # with a few dozen rows learn in 10 rounds (epochs 1, batch 32 gave 4-5 pp less on
    # scikit-learn's wine and breast_cancer split over 8 devices; issue 10).
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    l2: float = 0.0
    # Non-IID fleets (issue 21; edge_agent.trainer.local_fit). Defaults are today's training,
    # and only values that differ from them go on the wire, so older agents keep parsing.
    prox_mu: float = 0.0  # FedProx: mu/2 * ||w - w_global||^2
    augment: str = "none"  # models.augment.AUGMENTS
    jitter: float = 0.05  # relative noise / scaling amplitude of "jitter"
    distill_weight: float = 0.0  # weight of the teacher's KL term (classifiers only)
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ProtocolError("epochs and batch_size must be at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ProtocolError("learning_rate must be positive")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ProtocolError("l2 must be non-negative")
        if not (self.prox_mu >= 0 and math.isfinite(self.prox_mu)):
            raise ProtocolError(f"prox_mu must be a finite number >= 0, got {self.prox_mu!r}")
        if self.augment not in AUGMENTS:
            raise ProtocolError(f"augment must be one of {', '.join(AUGMENTS)}, "
                                f"got {self.augment!r}")
        if not 0 <= self.jitter <= 1:
            raise ProtocolError(f"jitter must lie in [0, 1], got {self.jitter!r}")
        if not (self.distill_weight >= 0 and math.isfinite(self.distill_weight)):
            raise ProtocolError("distill_weight must be a finite number >= 0, "
                                f"got {self.distill_weight!r}")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ProtocolError("distill_temperature must be a finite number > 0, "
                                f"got {self.distill_temperature!r}")

    @property
    def distills(self) -> bool:
        """Whether rounds carry the teacher sums and the local loss its KL term."""
        return self.distill_weight > 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epochs, "batch_size": self.batch_size,
                               "learning_rate": self.learning_rate, "l2": self.l2}
        for name in _OPTIONAL_SETTINGS:
            value = getattr(self, name)
            if value != _DEFAULT_SETTINGS[name]:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, doc: Any) -> TrainingSettings:
        if not isinstance(doc, dict):
            raise ProtocolError("settings must be an object")
        extra: dict[str, Any] = {}
        for name in _OPTIONAL_SETTINGS:
            if name in doc:
                extra[name] = (_get(doc, name, str) if name == "augment"
                               else _number(doc, name))
        return cls(epochs=int(_number(doc, "epochs")), batch_size=int(_number(doc, "batch_size")),
                   learning_rate=_number(doc, "learning_rate"), l2=_number(doc, "l2"), **extra)


_OPTIONAL_SETTINGS = ("prox_mu", "augment", "jitter", "distill_weight", "distill_temperature")
_DEFAULT_SETTINGS = {name: getattr(TrainingSettings, name) for name in _OPTIONAL_SETTINGS}


@dataclass(frozen=True)
class RoundMessage:
    """The current round (retained): global model, deadline and training settings.

    ``state == "finished"`` announces the final model; agents stop training.
    ``state == "failed"`` says the run ended without its rounds, ``reason`` why.
    """

    fleet: str
    round_id: int
    model_version: int
    state: str
    spec: ModelSpec
    params: tuple[float, ...]
    deadline: float
    settings: TrainingSettings
    key_fingerprint: str
    codec_digest: str
    run_id: str
    participants: tuple[str, ...] = ()  # sampled agents; empty: every online agent
    issued_at: float = field(default_factory=time.time)
    reason: str = ""  # only with state "failed"
    # The server optimizer the aggregator steps the model with (protocol.server).
    server: ServerSettings = field(default_factory=ServerSettings)
    # Federated distillation (protocol.sums.teacher): the fleet's per-class mean logits of
    # the previous global model, C*C row-major (row = true class); empty when none.
    teacher: tuple[float, ...] = ()

    SCHEMA = "fedmq.round/2"

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.run_id, "run id", ProtocolError)
        for agent in self.participants:
            check_name(agent, "participant", ProtocolError)
        if self.state not in ROUND_STATES:
            raise ProtocolError(f"round state must be one of {ROUND_STATES}")
        # The statistics round comes before round 1, as round 0 of model version 0.
        first = 0 if self.state == "statistics" else 1
        if self.round_id < first or self.model_version < 0:
            raise ProtocolError(f"a {self.state} round needs round_id >= {first} and "
                                "model_version >= 0")
        if len(self.reason) > MAX_REASON or (self.reason and self.state != "failed"):
            raise ProtocolError("a reason goes only with state 'failed', at most "
                                f"{MAX_REASON} characters")
        if len(self.params) != self.spec.n_params:
            raise ProtocolError(
                f"model of kind {self.spec.kind} needs {self.spec.n_params} parameters, "
                f"got {len(self.params)}"
            )
        if not all(math.isfinite(p) for p in self.params):
            raise ProtocolError("model parameters must be finite")
        if self.teacher:
            classes = self.spec.n_classes if self.spec.kind == "logistic" else 0
            if len(self.teacher) != classes * classes:
                raise ProtocolError(f"a teacher holds n_classes^2 = {classes * classes} logits "
                                    f"for a {self.spec.kind} model, got {len(self.teacher)}")
            if not all(math.isfinite(t) for t in self.teacher):
                raise ProtocolError("teacher logits must be finite")

    @property
    def phase(self) -> str | None:
        """The working phase (protocol.layout.PHASES), or None for a final state."""
        return self.state if self.state in PHASES else None

    @property
    def params_array(self) -> np.ndarray:
        return np.asarray(self.params, dtype=np.float64)

    def selects(self, agent_id: str) -> bool:
        return not self.participants or agent_id in self.participants

    def to_bytes(self, signer: Signer) -> bytes:
        # "reason" only when there is one: the other states sign exactly what they did;
        # "server" only when not plain FedAvg, so agents older than it parse the round.
        extra: dict[str, Any] = {"reason": self.reason} if self.reason else {}
        if not self.server.is_default:
            extra["server"] = self.server.to_dict()
        if self.teacher:  # only fleets that distil sign one: the others' rounds stay as they were
            extra["teacher"] = list(self.teacher)
        return sign_document({
            **extra, "schema": self.SCHEMA, "fleet": self.fleet, "round": self.round_id,
            "model_version": self.model_version, "state": self.state,
            "model": self.spec.to_dict(), "params": list(self.params),
            "deadline": self.deadline, "settings": self.settings.to_dict(),
            "key_fingerprint": self.key_fingerprint, "codec_digest": self.codec_digest,
            "run": self.run_id, "participants": list(self.participants),
            "issued_at": self.issued_at,
        }, signer)

    @classmethod
    def from_bytes(cls, payload: bytes, *,
                   verify_with: Ed25519PublicKey | None = None) -> RoundMessage:
        """Parse; with ``verify_with``, also require the aggregator's signature."""
        doc = loads(payload, cls.SCHEMA)
        if verify_with is not None:
            verify_document(doc, verify_with)
        params = _get(doc, "params", list)
        participants = _get(doc, "participants", list)
        if not all(isinstance(p, str) for p in participants):
            raise ProtocolError("participants must be a list of agent ids")
        teacher = _get(doc, "teacher", list) if "teacher" in doc else []
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                   for p in (*params, *teacher)):
            raise ProtocolError("params and teacher must be lists of numbers")
        try:
            spec = ModelSpec.from_dict(_get(doc, "model", dict))
        except ModelError as exc:
            raise ProtocolError(f"bad model spec: {exc}") from exc
        return cls(
            fleet=_get(doc, "fleet", str), round_id=_get(doc, "round", int),
            model_version=_get(doc, "model_version", int), state=_get(doc, "state", str),
            spec=spec, params=tuple(float(p) for p in params), deadline=_number(doc, "deadline"),
            settings=TrainingSettings.from_dict(doc.get("settings")),
            key_fingerprint=_get(doc, "key_fingerprint", str),
            codec_digest=_get(doc, "codec_digest", str), run_id=_get(doc, "run", str),
            participants=tuple(participants), issued_at=_number(doc, "issued_at"),
            reason=_get(doc, "reason", str) if "reason" in doc else "",
            server=ServerSettings.from_dict(doc["server"]) if "server" in doc
            else ServerSettings(),
            teacher=tuple(float(t) for t in teacher),
        )


@dataclass(frozen=True)
class StatusMessage:
    """An agent's liveness (retained; the broker publishes "offline" as its Last Will)."""

    agent_id: str
    state: str
    software: str = ""
    codecs: tuple[str, ...] = ()
    issued_at: float = field(default_factory=time.time)
    # Set while the device sits out a round and why (protocol.health); the field is
    # optional on the wire, so statuses of older agents still parse.
    skipped: Skip | None = None
    # Set when the device asks for the announcements it lacks (protocol.holdings); optional
    # on the wire like ``skipped``: older aggregators ignore it, older agents never send it.
    holds: Holdings | None = None

    SCHEMA = "fedmq.status/1"

    def __post_init__(self) -> None:
        check_name(self.agent_id, "agent id", ProtocolError)
        if self.state not in AGENT_STATES:
            raise ProtocolError(f"agent state must be one of {AGENT_STATES}")
        if self.skipped is not None and not isinstance(self.skipped, Skip):
            raise ProtocolError("skipped must be a protocol.health.Skip")
        if self.holds is not None and not isinstance(self.holds, Holdings):
            raise ProtocolError("holds must be a protocol.holdings.Holdings")

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"schema": self.SCHEMA, "agent": self.agent_id,
                               "state": self.state, "software": self.software,
                               "codecs": list(self.codecs), "issued_at": self.issued_at}
        if self.skipped is not None:
            doc["skipped"] = self.skipped.to_dict()
        if self.holds is not None:
            doc["holds"] = self.holds.to_dict()
        return dumps(doc)

    @classmethod
    def from_bytes(cls, payload: bytes) -> StatusMessage:
        doc = loads(payload, cls.SCHEMA)
        codecs = doc.get("codecs", [])
        if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
            raise ProtocolError("codecs must be a list of strings")
        skipped, holds = doc.get("skipped"), doc.get("holds")
        return cls(agent_id=_get(doc, "agent", str), state=_get(doc, "state", str),
                   software=str(doc.get("software", "")), codecs=tuple(codecs),
                   issued_at=_number(doc, "issued_at"),
                   skipped=None if skipped is None else Skip.from_dict(skipped),
                   holds=None if holds is None else Holdings.from_dict(holds))


@dataclass(frozen=True)
class MetricsMessage:
    """Per-round numbers for dashboards; nothing in it depends on one agent's data."""

    fleet: str
    round_id: int
    model_version: int
    expected: int
    reported: int
    rejected: int
    total_weight: float
    seconds: float
    update_norm: float
    closed_by: str
    phase: str = "training"
    # Federated evaluation of the model this round started from (FleetEvaluation.to_dict):
    # fleet totals only. None when the round had no evaluation section or it failed.
    evaluation: dict[str, Any] | None = None
    clipped_share: float = 0.0  # of the update values the training codec clipped
    skipped: dict[str, int] = field(default_factory=dict)  # skip code -> devices
    issued_at: float = field(default_factory=time.time)
    # Device-level DP: the run's epsilon spent so far (at ``delta``), None without DP.
    epsilon: float | None = None
    delta: float | None = None
    # For dashboards (fedmq dashboard): optional, so metrics of older gateways still parse.
    run_id: str = ""
    rounds: int = 0  # training rounds the run has in all
    update_bytes: int = 0  # payload bytes of the updates the round accepted
    model_bytes: int = 0  # bytes of the round's retained announcements
    rejected_by: dict[str, int] = field(default_factory=dict)  # reason -> updates rejected
    epsilon_budget: float | None = None  # the run's DP budget (at ``delta``)
    server_optimizer: str = ""  # [server] optimizer of the run ("": a gateway before it)

    SCHEMA = "fedmq.metrics/3"

    def to_bytes(self, signer: Signer) -> bytes:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return sign_document({"schema": self.SCHEMA, **doc}, signer)

    @classmethod
    def from_bytes(cls, payload: bytes, *,
                   verify_with: Ed25519PublicKey | None = None) -> MetricsMessage:
        doc = loads(payload, cls.SCHEMA)
        if verify_with is not None:
            verify_document(doc, verify_with)
        try:
            # Fields with defaults may be absent (older gateways); required ones may not.
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"bad metrics message: {exc}") from exc
