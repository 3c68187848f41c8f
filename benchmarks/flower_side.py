"""The Flower half of ``fedmq bench-flower``: a gRPC server and its NumPyClients.

Run by benchmarks.flower with the Python of a venv that has flwr (``.[flower]``):

    python -m fedmq.benchmarks.flower_side server PORT TASK_JSON  # FedAvg, a JSON line a round
    python -m fedmq.benchmarks.flower_side clients ADDRESS TASK_JSON CSV...  # a thread a client
    python -m fedmq.benchmarks.flower_side describe TASK_JSON CSV...  # what clients start with

Flower's own deployment path (``flwr.server.start_server`` / ``flwr.client.start_client``,
the gRPC transport; deprecated in favour of SuperLink/SuperNode but still Flower's
plain client-server mode) rather than its Ray simulation engine: each client holds a real
gRPC connection and does its own work, as fedmq's agents hold MQTT connections.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.benchmarks.flower_task import Task, load_client, local_fit

try:
    import flwr
    from flwr.client import NumPyClient, start_client
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg
except ImportError:  # pragma: no cover - benchmarks.flower checks before starting us
    sys.exit("flwr is not installed in this Python: pip install -e '.[flower]'")


class BenchClient(NumPyClient):
    """fit = the fedmq agent's local SGD on the same CSV; no evaluate (fedmq's round
    sends its evaluation sums with the update; Flower's FedAvg here scores nothing)."""

    def __init__(self, task: Task, path: Path) -> None:
        self.task = task
        self.data = load_client(task, path)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [self.task.initial_params()]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
            ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        start = np.asarray(parameters[0], dtype=np.float64)
        return [local_fit(self.task, self.data, start)], self.data.n_samples, {}


class TimedFedAvg(FedAvg):
    """Flower's standard FedAvg; prints one JSON line as each round's fit closes."""

    def __init__(self, task: Task) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0,
                         min_fit_clients=task.clients, min_available_clients=task.clients,
                         initial_parameters=ndarrays_to_parameters([task.initial_params()]))
        self._opened: dict[int, float] = {}

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        self._opened[server_round] = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        params, metrics = super().aggregate_fit(server_round, results, failures)
        up = sum(sum(len(t) for t in fit.parameters.tensors) for _, fit in results)
        print(json.dumps({
            "round": server_round, "seconds": time.perf_counter() - self._opened[server_round],
            "clients": len(results), "failures": len(failures), "update_payload_bytes": up,
            "model_payload_bytes": sum(len(t) for t in params.tensors) * len(results),
            "params": parameters_to_ndarrays(params)[0].tolist()}), flush=True)
        return params, metrics


def serve(port: int, task: Task) -> None:
    start_server(server_address=f"127.0.0.1:{port}", strategy=TimedFedAvg(task),
                 config=ServerConfig(num_rounds=task.rounds))


def run_clients(address: str, task: Task, paths: list[Path]) -> None:
    clients = [BenchClient(task, p) for p in paths]  # data loaded before anyone connects
    threads = [threading.Thread(target=start_client, name=f"flower-client-{i}", daemon=True,
                                kwargs={"server_address": address, "client": c.to_client(),
                                        "insecure": True, "max_retries": 20,
                                        "max_wait_time": 60.0})
               for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def describe(task: Task, paths: list[Path]) -> dict[str, Any]:
    """What Flower starts from: the strategy's initial parameters and each client's
    sample count (its FedAvg weight) and first parameters."""
    strategy = TimedFedAvg(task)
    clients = [BenchClient(task, p) for p in paths]
    return {"flwr": flwr.__version__,
            "initial_params": parameters_to_ndarrays(strategy.initial_parameters)[0].tolist(),
            "client_params": [c.get_parameters({})[0].tolist() for c in clients],
            "samples": [c.data.n_samples for c in clients],
            "n_params": task.spec.n_params}


def main(argv: list[str]) -> int:
    action = argv[0]
    if action == "server":
        serve(int(argv[1]), Task.from_json(argv[2]))
    elif action == "clients":
        run_clients(argv[1], Task.from_json(argv[2]), [Path(p) for p in argv[3:]])
    elif action == "describe":
        print(json.dumps(describe(Task.from_json(argv[1]), [Path(p) for p in argv[2:]])))
    else:
        print(f"unknown action {action!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
