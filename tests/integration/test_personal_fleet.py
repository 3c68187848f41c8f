"""Personal models over a real broker: their fleet metrics arrive through the encrypted sums,
equal the plaintext metrics on the pooled rows, and nothing else leaves a device."""

from __future__ import annotations

import math
import threading

import numpy as np
from support import wait_until

from fedmq.protocol.layout import StatsCodec, layout_for
from fedmq.protocol.messages import MetricsMessage, TrainingSettings
from fedmq.protocol.sums.evaluation import eval_length
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import decode_update
from fedmq.runtime.transport import MqttLink, MqttSettings

TOPICS = Topics("test")


class Everything:
    """A client subscribed to every topic of the broker, as anyone on it could be."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.link = MqttLink(MqttSettings(port=port), client_id="sniffer", on_message=self._on,
                             subscriptions=[("#", 1)])
        self.link.connect()

    def _on(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.seen.append((topic, payload))


def _known(topic: str) -> bool:
    fixed = {TOPICS.pubkey, TOPICS.round, TOPICS.metrics, TOPICS.progress}
    return topic in fixed or any(
        TOPICS.agent_of(topic, kind) is not None for kind in ("update", "status", "notice"))


def test_personal_metrics_arrive_encrypted_and_equal_the_pooled_plaintext(
        broker_port, make_aggregator, start_agents):
    sniffer = Everything(broker_port)
    holdout = {f"agent-{i}": {"holdout": 0.25} for i in range(3)}
    agents = start_agents(broker_port, 3, options=holdout)
    settings = TrainingSettings(epochs=2, batch_size=8, learning_rate=0.1, personal="ditto",
                                personal_epochs=3)
    aggregator = make_aggregator(broker_port, rounds=2, quorum=3, min_agents=3,
                                 config={"training": settings})
    aggregator.run()

    # Every round, and the final evaluation, carried the personal block.
    results = [*aggregator.results, aggregator.final_evaluation]
    assert all(r is not None and r.personal is not None for r in results)
    final = aggregator.final_evaluation
    assert final is not None and final.personal is not None and final.evaluation is not None
    last_round = final.round_id
    # Each agent kept the personal model it derived from the final model (after its update).
    wait_until(lambda: all(a.personal.current is not None
                           and a.personal.current.meta.get("round_id") == last_round
                           for a in agents), "the agents to keep their final personal models")
    correct = rows = 0
    confusion = np.zeros((2, 2), dtype=int)
    losses = 0.0
    for agent in agents:
        model, data = agent.personal.current, agent.eval_data
        assert model is not None and model.mode == "ditto" and model.lam in settings.ditto_lambdas
        # Held-out rows: the personal model never trained on the rows it is evaluated on.
        assert data.n_samples < agent.data.n_samples
        predicted = model.predict(data.X)
        labels = data.y.astype(int)
        correct += int((predicted == labels).sum())
        rows += data.n_samples
        np.add.at(confusion, (labels, predicted), 1)
        proba = model.predict_proba(data.X)[np.arange(data.n_samples), labels]
        losses += float(-np.log(proba).sum())
    personal = final.personal
    assert personal.n == rows == final.evaluation.n
    assert personal.metrics["accuracy"] == correct / rows
    assert personal.confusion == tuple(tuple(int(v) for v in r) for r in confusion)
    resolution = rows * 2.0 ** -aggregator.config.statistics.fraction_bits
    assert math.isclose(personal.metrics["log_loss"], losses / rows, abs_tol=resolution)

    # The broker saw no new topic, and each update grew by the personal block only.
    with sniffer.lock:
        seen = list(sniffer.seen)
    assert all(_known(topic) for topic, _ in seen), {t for t, _ in seen if not _known(t)}
    updates = [p for t, p in seen if TOPICS.agent_of(t, "update") is not None]
    assert len(updates) == 9  # 3 agents: 2 training rounds and the final evaluation
    cfg = aggregator.config
    extra = StatsCodec(cfg.statistics, aggregator.public_key.n).plaintext_count(
        eval_length(aggregator.spec))
    for payload in updates:
        msg = decode_update(payload, aggregator.public_key)
        phase = "training" if msg.round_id <= 2 else "evaluation"
        plain = layout_for(phase, aggregator.spec, cfg.codec, cfg.statistics,
                           aggregator.public_key.n).plaintext_count()
        assert len(msg.ciphertexts) == plain + extra
    # The signed metrics carry both models' numbers; readers of the old fields still work.
    metrics = [MetricsMessage.from_bytes(p) for t, p in seen if t == TOPICS.metrics]
    finals = [m for m in metrics if m.phase == "evaluation"]
    assert finals and finals[-1].personal is not None
    assert finals[-1].personal["metrics"]["accuracy"] == correct / rows
    assert finals[-1].personal_mode == "ditto"
