"""Numbers from Flower's own ``FedAdam`` strategy, for the tests that claim agreement with it.

Builds ``flwr.server.strategy.FedAdam`` (Flower 1.42.0) in-process and calls its ``aggregate_fit`` directly on
hand-made ``FitRes`` results for eight rounds, with ``server_round`` 1, 2, ... as Flower's server numbers them:
no server, no simulation engine, no network. Three clients with unequal numbers of examples return float64
parameters (two arrays) drawn around the current global model from a seeded NumPy generator. The inputs and
Flower's new global parameters of every round are written to ``tests/fixtures/flower_fedadam.json``.

Flower is not a dependency of the project; run this once in a separate environment::

    python3 -m venv /tmp/flwr_venv && /tmp/flwr_venv/bin/pip install flwr==1.42.0 numpy
    /tmp/flwr_venv/bin/python scripts/flower_fixtures.py

The test ``tests/aggregators/test_fedadam_flower.py`` feeds the same inputs through
``lightning_fedmut.aggregators.FedAdam(bias_correction="flower", initial_accumulator=0.0, weighted=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "flower_fedadam.json"
ROUNDS = 8
NUM_EXAMPLES = [30, 10, 60]
HPARAMS = {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}


def main() -> None:
    import flwr
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdam

    rng = np.random.default_rng(0)
    initial = [rng.normal(size=3), rng.normal(size=(2, 2))]
    strategy = FedAdam(initial_parameters=ndarrays_to_parameters(initial), **HPARAMS)
    current = [a.copy() for a in initial]
    rounds = []
    for server_round in range(1, ROUNDS + 1):
        clients = [[c + rng.normal(scale=0.1, size=c.shape) + 0.05 for c in current] for _ in NUM_EXAMPLES]
        results = [(None, FitRes(status=Status(code=Code.OK, message=""), parameters=ndarrays_to_parameters(arrays),
                                 num_examples=n, metrics={}))
                   for arrays, n in zip(clients, NUM_EXAMPLES)]
        parameters, _ = strategy.aggregate_fit(server_round, results, [])  # type: ignore[arg-type]
        assert parameters is not None
        current = parameters_to_ndarrays(parameters)
        rounds.append({
            "server_round": server_round,
            "clients": [[a.tolist() for a in arrays] for arrays in clients],
            "num_examples": NUM_EXAMPLES,
            "flower_global": [a.tolist() for a in current],
        })
    OUT.write_text(json.dumps({
        "flwr_version": flwr.__version__,
        "strategy": "flwr.server.strategy.FedAdam",
        "hparams": HPARAMS,
        "dtype": str(current[0].dtype),
        "initial": [a.tolist() for a in initial],
        "rounds": rounds,
    }, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
