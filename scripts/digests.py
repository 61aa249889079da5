"""Digests of a few fixed federated runs: final weights, history and client history, bit for bit.

A refactor of the round loop must leave every digest unchanged. Run it before and after a change and compare:

    OMP_NUM_THREADS=1 python scripts/digests.py > before.json
    OMP_NUM_THREADS=1 python scripts/digests.py --compare before.json

Digests depend on the torch build and the CPU's instruction set, so they are compared on one machine, not
across machines (they are not a test). Timings are left out; everything else the run returns is hashed.
`results/digests_before.json` are the digests before the round loop's refactor; `results/digests_fedmr_bound.json`
after FedMR's recombination bound was fixed (only the two FedMR digests differ between them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import TinyModule, make_synthetic
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet

RUNS = {
    "fedavg_weighted": dict(aggregator="weighted", k=3, mutation=None),
    "fedavg_uniform": dict(aggregator="uniform", k=3, mutation=None),
    "fedmut_even_k4": dict(aggregator="uniform", k=4, mutation={"mutate_buffers": False}),
    "fedmut_odd_k3_buffers": dict(aggregator="uniform", k=3, mutation={"mutate_buffers": True}),
    "fedmut_even_k4_steps": dict(aggregator="uniform", k=4, mutation={"mutate_buffers": False}, local_steps=2),
}


def _digest_tensors(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _digest_rows(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def run(spec: dict, checkpoint_dir: str | None = None, ckpt_path: str | None = None) -> dict:
    train, val = make_synthetic()
    parts = partition_dirichlet(train.tensors[1].numpy(), 8, alpha=0.5, min_size=5, seed=0)
    clients = make_clients(train, parts, batch_size=16)
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    callbacks = [] if spec["mutation"] is None else [MutationCallback(radius=2.0, acceleration_rounds=3,
                                                                      **spec["mutation"])]
    loop = FederatedLoop(rounds=5, clients_per_round=spec["k"], local_epochs=2, local_steps=spec.get("local_steps"),
                         aggregator=FedAvg(weighted=spec["aggregator"] == "weighted"), callbacks=callbacks,
                         seed=7, enable_progress_bar=False, checkpoint_dir=checkpoint_dir)
    result = loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60), ckpt_path=ckpt_path)
    return {
        "weights": _digest_tensors(model.state_dict()),
        "history": _digest_rows(result.history),
        "client_history": _digest_rows(result.client_history),
        "final_val_acc": result.history[-1].get("val_acc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="a JSON file of earlier digests to compare with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    digests = {name: run(spec) for name, spec in RUNS.items()}
    # a resumed run: 3 rounds with checkpoints, then resume to the end
    with tempfile.TemporaryDirectory() as d:
        spec = RUNS["fedmut_even_k4"]
        _run_rounds(spec, d, 3)
        digests["fedmut_even_k4_resumed"] = run(spec, checkpoint_dir=d, ckpt_path="last")
    for name in METHODS:  # every other method, 3 rounds, in one process and with 2 workers
        digests[f"method_{name}"] = run_method(name, workers=None)
    for name in WORKER_METHODS:
        digests[f"method_{name}_2workers"] = run_method(name, workers=2)
    print(json.dumps(digests, indent=2, sort_keys=True))
    if args.compare is not None:
        before = json.loads(args.compare.read_text())
        diff = {k: (before.get(k), digests.get(k)) for k in sorted(set(before) | set(digests))
                if before.get(k) != digests.get(k)}
        if diff:
            print(f"DIFFERENT: {json.dumps(diff, indent=2)}", file=sys.stderr)
            raise SystemExit(1)
        print(f"all {len(digests)} digests equal", file=sys.stderr)


def _methods() -> dict:
    from lightning_fedmut.aggregators import FedAdagrad, FedAdam, FedAvgM, FedExP, FedExPReport, FedYogi
    from lightning_fedmut.callbacks import FedMR, FedProx, Scaffold
    from lightning_fedmut.sampling import ClusteredSampler

    return {
        "FedProx": lambda: {"callbacks": [FedProx(mu=0.1)]},
        "FedMut+FedProx": lambda: {"callbacks": [MutationCallback(radius=2.0), FedProx(mu=0.1)]},
        "SCAFFOLD": lambda: {"callbacks": [Scaffold()]},
        "FedAvgM": lambda: {"aggregator": FedAvgM(server_lr=1.0, momentum=0.9)},
        "FedAdagrad": lambda: {"aggregator": FedAdagrad(server_lr=0.05)},
        "FedAdam": lambda: {"aggregator": FedAdam(server_lr=0.05)},
        "FedMut+FedAdam": lambda: {"aggregator": FedAdam(server_lr=0.05),
                                   "callbacks": [MutationCallback(radius=2.0)]},
        "FedYogi": lambda: {"aggregator": FedYogi(server_lr=0.05)},
        "FedExP": lambda: {"aggregator": FedExP(), "callbacks": [FedExPReport()]},
        "ClusteredSampling": lambda: {"sampler": ClusteredSampler()},
        "FedMR": lambda: {"callbacks": [FedMR(first_stage_bound=1)]},
        "FedMut": lambda: {"callbacks": [MutationCallback(radius=2.0)]},
        "FedAvg": dict,
    }


METHODS = _methods()
WORKER_METHODS = ("FedAvg", "FedMut", "FedMut+FedProx", "SCAFFOLD", "FedExP", "ClusteredSampling", "FedMR",
                  "FedAdam")


def run_method(name: str, workers: int | None) -> dict:
    """One 3-round run of a method (the baselines' test setup), in one process or with ``workers`` processes."""
    train, val = make_synthetic()
    parts = partition_dirichlet(train.tensors[1].numpy(), num_clients=8, alpha=0.5, min_size=8, seed=0)
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    plugins = METHODS[name]()
    plugins.setdefault("aggregator", FedAvg(weighted=False))
    loop = FederatedLoop(rounds=3, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         workers=workers, **plugins)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60))
    return {
        "weights": _digest_tensors(model.state_dict()),
        "history": _digest_rows(result.history),
        "client_history": _digest_rows(result.client_history),
    }


def _run_rounds(spec: dict, checkpoint_dir: str, rounds: int) -> None:
    """Run the first ``rounds`` rounds of a 5-round run by stopping it from a callback, with checkpoints."""
    from lightning_fedmut import FederatedCallback

    class StopAfter(FederatedCallback):
        def on_round_end(self, loop, module):
            if loop.round + 1 == rounds:
                loop.should_stop = True

    train, val = make_synthetic()
    parts = partition_dirichlet(train.tensors[1].numpy(), 8, alpha=0.5, min_size=5, seed=0)
    clients = make_clients(train, parts, batch_size=16)
    torch.manual_seed(0)
    model = TinyModule(batch_norm=True, momentum=0.5)
    loop = FederatedLoop(rounds=5, clients_per_round=spec["k"], local_epochs=2,
                         aggregator=FedAvg(weighted=False),
                         callbacks=[MutationCallback(radius=2.0, acceleration_rounds=3, **spec["mutation"]), StopAfter()],
                         seed=7, enable_progress_bar=False, checkpoint_dir=checkpoint_dir)
    loop.fit(model, clients, val_dataloaders=DataLoader(val, batch_size=60))


if __name__ == "__main__":
    main()
