"""One real data set under device-level DP: an in-process fleet on an embedded broker.

The data set (scikit-learn's breast_cancer by default) is split non-IID over the
devices by fedmq.simulation.datasets, each device reads its own CSV of raw features, and the
real Aggregator and EdgeAgents (worker processes, as ``fedmq simulate``) run the
encrypted rounds on an embedded broker on 127.0.0.1. The raw features need
center/scale and a public data set gives none that is not computed from its own
rows, so the statistics round runs with ``exact_aggregates = true``: its exact
feature totals are released OUTSIDE the privacy budget (the table says so).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmq.simulation import datasets

if TYPE_CHECKING:
    from fedmq.aggregator.service import Aggregator
    from fedmq.edge_agent.config import AgentConfig


@dataclass(frozen=True)
class RealTask:
    dataset: str = "breast_cancer"
    devices: int = 30
    rounds: int = 10
    alpha: float = 1.0  # Dirichlet label skew (0.5 cannot give 30 devices 5 rows each)
    test_share: float = 0.3
    split_seed: int = 0
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    round_timeout: float = 30.0


@dataclass(frozen=True)
class RealRun:
    score: float  # accuracy of the final global model on the held-out test rows
    spent: float | None  # epsilon in the run's ledger (privacy.json); None without DP
    noise_multiplier: float | None
    rounds_run: int  # training rounds that closed (the budget may end a run early)


def real_split(task: RealTask) -> datasets.Split:
    ds = datasets.load(task.dataset)
    return datasets.split(ds, devices=task.devices, test_share=task.test_share,
                          alpha=task.alpha, seed=task.split_seed)


def baselines(sp: datasets.Split) -> tuple[float, float]:
    """Centralized scikit-learn on the pooled training rows, and the majority class's
    share of the test rows (what a model that learned nothing scores)."""
    y = sp.dataset.y[sp.test].astype(np.int64)
    return datasets.centralized_score(sp), float(np.bincount(y).max() / y.size)


def run_real(task: RealTask, sp: datasets.Split, *, epsilon: float | None, clip: float,
             delta: float, key_bits: int, workers: int, out: Path) -> RealRun:
    """One run of ``task`` (fresh noise: the devices draw it from OS entropy)."""
    # Here, not at the top: `fedmq --help` builds the parser from this package.
    from fedmq.aggregator.config import AggregatorConfig, RoundPolicy
    from fedmq.aggregator.privacy import LEDGER_FILE, privacy_terms
    from fedmq.aggregator.schema import PrivacyTable
    from fedmq.aggregator.service import Aggregator
    from fedmq.edge_agent.config import AgentConfig
    from fedmq.models import ModelSpec, make_model
    from fedmq.protocol.crypto.codec import CodecParams
    from fedmq.protocol.messages import TrainingSettings
    from fedmq.protocol.privacy.accounting import PrivacyLedger
    from fedmq.protocol.privacy.terms import PrivacyTerms
    from fedmq.protocol.sums.statistics import StatsParams
    from fedmq.protocol.topics import Topics
    from fedmq.runtime.files import load_or_create_signer
    from fedmq.simulation.broker import BrokerChoice, fleet_broker
    from fedmq.simulation.rundirs import start_run
    from fedmq.simulation.shards import ShardedFleet

    ds = sp.dataset
    run, _note = start_run(out)
    files = datasets.write_split(sp, run.run_dir / "data")
    ids = datasets.device_ids(task.devices)
    spec = ModelSpec(kind=ds.kind, features=ds.features, n_classes=ds.n_classes)
    codec = CodecParams(max_agents=max(CodecParams().max_agents, task.devices))
    privacy = PrivacyTerms() if epsilon is None else privacy_terms(
        PrivacyTable(epsilon=epsilon, delta=delta, clip=clip, exact_aggregates=True),
        spec=spec, rounds=task.rounds, quorum=task.devices, codec=codec)
    topics = Topics(fleet="dpbench")
    with fleet_broker(BrokerChoice.parse("embedded"), topics=topics, agent_ids=ids,
                      out_dir=run.run_dir, own_process=True) as broker:
        agg_dir = run.aggregator_dir
        config = AggregatorConfig(
            topics=topics, spec=spec, mqtt=broker.aggregator,
            key_file=str(agg_dir / "paillier.key"), key_bits=key_bits,
            policy=RoundPolicy(rounds=task.rounds, round_timeout=task.round_timeout,
                               quorum=task.devices, min_agents=task.devices,
                               start_timeout=120.0),
            training=TrainingSettings(epochs=task.epochs, batch_size=task.batch_size,
                                      learning_rate=task.learning_rate),
            codec=codec, statistics=StatsParams(max_agents=codec.max_agents),
            state_dir=str(agg_dir), signing_key_file=str(agg_dir / "signing.key"),
            resume=False, privacy=privacy)
        configs = [AgentConfig(
            agent_id=dev, topics=topics, data_path=str(files[dev]), features=ds.features,
            label=ds.label, mqtt=broker.agent(dev), state_dir=str(run.run_dir / "agents" / dev),
            seed=i) for i, dev in enumerate(ids)]
        allow = {c.agent_id: load_or_create_signer(c.signing_key_path).public_key
                 for c in configs}
        aggregator = Aggregator(config, allow_list=allow, run_id=run.run_id)
        configs = [_pinned(c, aggregator) for c in configs]
        fleet = ShardedFleet(configs, workers=workers, spread=0.005 * task.devices,
                             log_level=logging.getLogger().getEffectiveLevel())
        fleet.start()
        try:
            final = aggregator.run()
        finally:
            fleet.stop()
    X, y = sp.xy(sp.test)
    score = float(make_model(aggregator.spec).set_params_vector(final).score(X, y))
    ledger = aggregator.store.run_dir / LEDGER_FILE
    spent = (PrivacyLedger.from_dict(json.loads(ledger.read_bytes())).epsilon()
             if ledger.exists() else None)
    trained = sum(r.phase == "training" for r in aggregator.results)
    device = privacy.device
    return RealRun(score, spent, None if device is None else device.noise_multiplier, trained)


def _pinned(cfg: AgentConfig, aggregator: Aggregator) -> AgentConfig:
    """The agent config with the aggregator's key fingerprint and signing key pinned."""
    return replace(cfg, key_fingerprint=aggregator.fingerprint,
                   aggregator_signing_key=aggregator.signer.public_hex)

