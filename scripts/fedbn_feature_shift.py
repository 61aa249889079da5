"""FedBN against FedAvg on feature-shifted digits: each client sees its images through its own pixel scale and shift.

Client ``i``'s pixels (train and validation) are ``x * s_i + b_i``, with ``s_i`` log-uniform in ``[1/4, 4]`` and
``b_i`` uniform in ``[-1, 1]`` (drawn from the seed); labels are split IID, so the clients differ by their features
only, the setting FedBN (Li et al., ICLR 2021) is built for. The model is the digits CNN with BatchNorm
(``lightning_fedmut.models.DigitsCNN``). For each seed it runs FedAvg and FedBN on the same clients and reports,
after the last round:

- ``global``: the global model on the server's test set (the held-out digits, each shifted like one client's, in
  turn);
- ``personal``: each client's own model (FedBN: the global model with the client's BatchNorm; FedAvg: the global
  model itself) on the client's own validation data, averaged over the clients (``personal/val_acc_mean``), with
  the worst 10 % of clients.

Then the mean and sample standard deviation over the seeds (n = number of seeds). About two minutes of one CPU core:

    OMP_NUM_THREADS=1 python scripts/fedbn_feature_shift.py --output scripts/results/fedbn_feature_shift.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fedmut import FederatedLoop, make_clients
from lightning_fedmut.algorithms import FedAvg, FedBN
from lightning_fedmut.data import partition_iid
from lightning_fedmut.datasets import load_digits_split
from lightning_fedmut.models import DigitsCNN


def shifts(num_clients: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each client's pixel scale (log-uniform in [1/4, 4]) and shift (uniform in [-1, 1])."""
    rng = np.random.default_rng(10_000 + seed)
    return np.exp(rng.uniform(math.log(0.25), math.log(4.0), num_clients)), rng.uniform(-1.0, 1.0, num_clients)


def shifted_data(num_clients: int, seed: int) -> tuple[TensorDataset, list[np.ndarray], TensorDataset]:
    """The training set shifted client by client, its partition, and the test set shifted in turn by each client's."""
    train, test = load_digits_split(seed=0)
    parts = partition_iid(len(train), num_clients, seed=seed)
    scale, shift = shifts(num_clients, seed)
    x = train.tensors[0].clone()
    for i, part in enumerate(parts):
        x[part] = train.tensors[0][part] * float(scale[i]) + float(shift[i])
    x_test = test.tensors[0].clone()
    for j in range(len(x_test)):
        x_test[j] = x_test[j] * float(scale[j % num_clients]) + float(shift[j % num_clients])
    return TensorDataset(x, train.tensors[1]), parts, TensorDataset(x_test, test.tensors[1])


def run(method: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    train, parts, test = shifted_data(args.clients, seed)
    clients = make_clients(train, parts, batch_size=args.batch_size, val_fraction=0.2, seed=seed)
    torch.manual_seed(seed)
    model = DigitsCNN(batch_norm=True, lr=args.lr)
    algorithm = FedBN() if method == "FedBN" else FedAvg()
    loop = FederatedLoop(rounds=args.rounds, clients_per_round=args.per_round, local_epochs=args.local_epochs,
                         algorithm=algorithm, evaluate_every=args.rounds, seed=seed, enable_progress_bar=False,
                         personal_evaluation=True)
    last = loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500)).history[-1]
    return {"global": last["val_acc"], "personal": last["personal/val_acc_mean"],
            "personal_worst10": last["personal/val_acc_worst10"], "personal_std_over_clients":
            last["personal/val_acc_std"], "clients": last["personal/val_acc_n"]}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per_round", type=int, default=5)
    parser.add_argument("--local_epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--output", type=str, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {"FedAvg": [], "FedBN": []}
    for seed in args.seeds:
        for method in runs:  # the two methods alternate, on the same clients
            runs[method].append(run(method, seed, args))
            print(f"seed {seed} {method}: {runs[method][-1]}", flush=True)
    summary = {m: {k: spread([r[k] for r in rs]) for k in ("global", "personal", "personal_worst10")}
               for m, rs in runs.items()}
    print("| method | global accuracy | personalised accuracy | worst 10 % of clients |")
    print("| --- | --- | --- | --- |")
    for method, s in summary.items():
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f} (n={s[k]['n']})" for k in ("global", "personal",
                                                                                      "personal_worst10")]
        print(f"| {method} | {' | '.join(cells)} |")
    print(f"{time.perf_counter() - start:.0f} s", flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"args": vars(args), "runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
