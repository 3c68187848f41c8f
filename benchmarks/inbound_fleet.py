"""The round ``fedmq bench-inbound`` feeds the aggregator: genuine signed training updates.

Each update is what an agent publishes in a training round: a quantized weighted
delta (training section) and its evaluation sums of the received model on its
own rows (evaluation section), packed by ``protocol.layout``, Paillier-encrypted,
framed and signed with the agent's own Ed25519 key. Only the obfuscators are
cheaper to make than an agent's: a few r^n mod n^2 are computed and the rest are
products of them, (r_1 r_2)^n = r_1^n r_2^n, still valid and never reused. The
aggregator cannot tell, and its work per ciphertext is the same.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import gmpy2
import numpy as np

from fedmq.models import ModelSpec, make_model
from fedmq.protocol.crypto.codec import CodecParams, quantize_update
from fedmq.protocol.crypto.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    encrypt_ints,
    fingerprint,
    generate_keypair,
)
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.layout import UpdateLayout, contract_digest, layout_for
from fedmq.protocol.sums.evaluation import local_evaluation
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import UpdateMessage, encode_update

FLEET, RUN_ID, ROUND_ID = "bench", "0123456789abcdef", 1
BASE_OBFUSCATORS = 16  # full r^n mod n^2 exponentiations; the rest are their products


@dataclass(frozen=True)
class BenchFleet:
    """``payloads`` (agent, bytes) as they come off the broker, and what they must sum to."""

    public_key: PaillierPublicKey
    private_key: PaillierPrivateKey
    spec: ModelSpec
    codec: CodecParams
    statistics: StatsParams
    layout: UpdateLayout
    topics: Topics
    allow_list: dict[str, Ed25519PublicKey]
    payloads: tuple[tuple[str, bytes], ...]
    plain_sums: tuple[tuple[int, ...], ...]  # per section: the exact sum of every update

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def codec_digest(self) -> str:
        return contract_digest(self.codec, self.statistics, self.key_fingerprint)

    def topic(self, agent: str) -> str:
        return f"{self.topics.base}/update/{agent}"


def _obfuscators(public_key: PaillierPublicKey, seed: int) -> Iterator[int]:
    pick = random.Random(seed)
    n, nsq = gmpy2.mpz(public_key.n), gmpy2.mpz(public_key.nsquare)
    base = [gmpy2.powmod(pick.randrange(2, public_key.n), n, nsq)
            for _ in range(BASE_OBFUSCATORS)]
    running = gmpy2.mpz(1)
    while True:  # running = product of ever more bases: a fresh r^n every step
        running = gmpy2.f_mod(running * base[pick.randrange(len(base))], nsq)
        yield int(running)


def build_fleet(*, bits: int, d: int, updates: int, seed: int = 0, rows: int = 40,
                key: tuple[PaillierPublicKey, PaillierPrivateKey] | None = None,
                fleet: str = FLEET, run_id: str = RUN_ID) -> BenchFleet:
    """``updates`` genuine training updates of a binary logistic model over ``d`` features,
    from as many distinct agents and Ed25519 keys, for round 1 of ``run_id``."""
    rng = np.random.default_rng(seed)
    public_key, private_key = key or generate_keypair(bits)
    spec = ModelSpec(kind="logistic", features=tuple(f"x{i}" for i in range(d)), n_classes=2)
    codec = CodecParams(max_agents=max(updates, 1))
    statistics = StatsParams(max_agents=codec.max_agents)
    layout = layout_for("training", spec, codec, statistics, public_key.n)
    fp = fingerprint(public_key)
    digest = contract_digest(codec, statistics, fp)
    received = make_model(spec).set_params_vector(rng.normal(0.0, 0.3, spec.n_params))
    obfuscators = _obfuscators(public_key, seed)
    count = layout.plaintext_count()
    payloads, allow_list = [], {}
    sums = [np.zeros(s.n_values, dtype=object) for s in layout.sections]
    for i in range(updates):
        agent = f"agent-{i:05d}"
        signer = Signer.from_seed(f"bench-inbound:{seed}:{agent}".encode())
        allow_list[agent] = signer.public_key
        weight = int(rng.integers(rows // 2, rows + 1))
        training, clipped = quantize_update(rng.normal(0.0, 0.05, spec.n_params), weight, codec)
        X = rng.normal(0.0, 1.0, (weight, d))
        y = (X[:, 0] + rng.normal(0.0, 0.5, weight) > 0).astype(np.float64)
        evaluation = local_evaluation(received, X, y, statistics, clipped_train=clipped)
        parts = [training, evaluation]
        for total, part in zip(sums, parts, strict=True):
            total += np.array(part, dtype=object)
        ciphertexts = encrypt_ints(public_key, layout.encode(parts),
                                   [next(obfuscators) for _ in range(count)])
        msg = UpdateMessage(fleet=fleet, run_id=run_id, round_id=ROUND_ID, agent_id=agent,
                            key_fingerprint=fp, codec_digest=digest, n_values=layout.n_values,
                            ciphertexts=tuple(ciphertexts))
        payloads.append((agent, encode_update(msg, public_key, signer)))
    return BenchFleet(public_key=public_key, private_key=private_key, spec=spec, codec=codec,
                      statistics=statistics, layout=layout, topics=Topics(fleet),
                      allow_list=allow_list, payloads=tuple(payloads),
                      plain_sums=tuple(tuple(int(v) for v in s) for s in sums))
