"""How much memory the server holds for FedMut, for the built-in models, against the reference code.

The accounting follows what each implementation keeps alive between client trainings:

- lightning_fedmut: the global module, one working copy (reloaded in place for every client), FedAvg's
  running sums (one model, floating state kept in at least float32), MutationCallback's delta buffer (the
  mutated keys: the parameters by default) and its coefficient table (keys x clients per round, float64).
  Start models are written into the working copy one at a time, so only the table grows with K.
- FedMut's reference code (github.com/HMHelloWorld/FedMut, Algorithm/Training_FedMut.py) keeps a list of
  K state dicts (the start models, then the trained models) next to the global, previous-global and delta
  dicts and the network itself: K + 4 models between rounds, and 2K + 4 while ``mutation_spread`` builds
  the next list of deep copies before the old one is dropped.

Run:  python examples/tutorials/memory_footprint.py
Writes:  memory.md (the table, in Markdown) to $FEDMUT_OUTPUT_DIR (default outputs/memory_footprint).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lightning_fedmut.functional import floating_keys
from lightning_fedmut.models import MNIST1DCNN, VGG16, DigitsCNN, LeNetCNN, ResNet18

OUTPUT = Path(os.environ.get("FEDMUT_OUTPUT_DIR", "outputs/memory_footprint"))
MODELS = {
    "DigitsCNN (digits)": lambda: DigitsCNN(),
    "MNIST1DCNN (mnist1d)": lambda: MNIST1DCNN(),
    "LeNetCNN (CIFAR-10)": lambda: LeNetCNN(),
    "ResNet18 (CIFAR-10)": lambda: ResNet18(),
    "VGG16 (CIFAR-10)": lambda: VGG16(),
}
CLIENTS_PER_ROUND = (10, 100)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def server_bytes(model: torch.nn.Module, k: int) -> tuple[int, int, int]:
    """(lightning_fedmut, reference between rounds, reference peak) for ``k`` clients per round."""
    state = model.state_dict()
    model_bytes = nbytes(state.values())
    params = {name for name, _ in model.named_parameters()}
    mutated = floating_keys(state, params, include_buffers=False)
    sums = sum(v.numel() * torch.promote_types(v.dtype, torch.float32).itemsize if v.is_floating_point()
               else v.numel() * v.element_size() for v in state.values())
    ours = 2 * model_bytes + sums + nbytes(state[key] for key in mutated) + len(mutated) * k * 8
    return ours, (k + 4) * model_bytes, (2 * k + 4) * model_bytes


def mb(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def main() -> None:
    header = ["model", "parameters", "state keys", "one model"]
    for k in CLIENTS_PER_ROUND:
        header += [f"ours, K={k}", f"reference, K={k} (peak)"]
    rows = []
    for name, build in MODELS.items():
        model = build()
        state = model.state_dict()
        row = [name, f"{sum(p.numel() for p in model.parameters()):,}", str(len(state)), mb(nbytes(state.values()))]
        for k in CLIENTS_PER_ROUND:
            ours, between, peak = server_bytes(model, k)
            row += [mb(ours), f"{mb(between)} ({mb(peak)})"]
        rows.append(row)
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
                      + ["| " + " | ".join(row) + " |" for row in rows])
    print(table)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "memory.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
