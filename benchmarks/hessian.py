"""What a Hessian-vector product costs, against one forward and backward pass of the same model and batch.

``lightning_fedmut.analysis`` computes every curvature figure from Hessian-vector products (HVPs) by double
backward: the top eigenvalue costs one HVP per power iteration, the trace one per Hutchinson probe. This
benchmark times, in one process and interleaved repetition by repetition, on the same batch and model (in
eval mode, as the analysis runs it):

* ``fwd+bwd``  -- the baseline: ``loss = cross_entropy(model(x), y)``, ``torch.autograd.grad(loss, params)``,
  written by hand;
* ``gradient`` -- the analysis's own gradient pass (``training_step`` as the loss, batch-size weighting);
* ``hvp``      -- one Hessian-vector product of the analysis (``training_step``, double backward);
* ``power``    -- ``hessian_eigenvalues(k=1, max_iter=N, tol=0)`` divided by ``N``: one power iteration,
  with its dot products and normalisation and the session's setup spread over the ``N`` iterations.

Each is reported as milliseconds (best of and median of the repetitions) and as a ratio to ``fwd+bwd``
measured the same repetition (the median of the paired ratios cancels drifts in the machine's load).

Models: ``digits`` (``DigitsCNN``, 8x8 digits from scikit-learn, 11 k parameters) and ``resnet18``
(``ResNet18`` in its CIFAR form, 11.2 M parameters, on generated 3x32x32 images: the cost does not depend on
the pixel values).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/hessian.py                          # digits CNN, CPU, about 1 minute
    OMP_NUM_THREADS=1 python benchmarks/hessian.py --quick                  # smoke run, a few seconds
    python benchmarks/hessian.py --model resnet18 --device cuda --batch 128 # on a GPU
    python benchmarks/hessian.py --model resnet18 --batch 16 --repeats 5    # ResNet-18 on a CPU: slow
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from lightning_fedmut.analysis import hessian_eigenvalues
from lightning_fedmut.analysis._objective import objective
from lightning_fedmut.analysis.directions import random_direction


def build(model_name: str, batch: int, device: torch.device) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    if model_name == "digits":
        from lightning_fedmut.datasets import load_digits_split
        from lightning_fedmut.models import DigitsCNN

        train, _ = load_digits_split()
        x, y = train.tensors[0][:batch], train.tensors[1][:batch]
        model = DigitsCNN()
    else:
        from lightning_fedmut.models import ResNet18

        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
        model = ResNet18()
    return model.to(device), (x.to(device), y.to(device))


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("digits", "resnet18"), default="digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="examples per batch (digits 500, resnet18 64)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--power-iterations", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 repeats, 5 power iterations")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.power_iterations = 5, 5
    torch.set_num_threads(1)
    device = torch.device(args.device)
    batch = args.batch or (500 if args.model == "digits" else 64)
    model, (x, y) = build(args.model, batch, device)
    data = [(x, y)]
    params = [p for p in model.parameters() if p.requires_grad]
    vector = list(random_direction(model, seed=0, ignore_bias_bn=False).values())
    model.eval()

    def fwd_bwd() -> None:
        with torch.enable_grad():
            torch.autograd.grad(F.cross_entropy(model(x), y), params)

    n = args.power_iterations
    every = max(1, args.repeats // 5)  # a power-iteration run every this many repeats (they take n HVPs each)

    def power() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # tol=0: it runs all n iterations, on purpose
            hessian_eigenvalues(model, data, max_iter=n, tol=0.0)

    times: dict[str, list[float]] = {"fwd+bwd": [], "gradient": [], "hvp": [], "power": []}
    paired: dict[str, list[float]] = {name: [] for name in times}
    with objective(model, data, None) as session:
        fwd_bwd(), session.gradient(), session.hvp(vector)  # warm-up
        for rep in range(args.repeats):
            base = timed(fwd_bwd, device)
            runs = {"fwd+bwd": base, "gradient": timed(session.gradient, device),
                    "hvp": timed(lambda: session.hvp(vector), device)}
            if rep % every == 0:
                runs["power"] = timed(power, device) / n  # a session of its own inside this one: it restores too
            for name, value in runs.items():
                times[name].append(value)
                paired[name].append(value / base)

    base = times["fwd+bwd"]
    size = sum(p.numel() for p in params)
    print(f"{args.model} ({size:,} parameters), batch {batch}, {device}, torch {torch.__version__},"
          f" {torch.get_num_threads()} thread(s), {args.repeats} repeats ({len(times['power'])} of power iteration)")
    print(f"{'':<10}{'best ms':>10}{'median ms':>11}{'best / fwd+bwd':>16}{'paired median':>15}")
    out = {"model": args.model, "parameters": size, "batch": batch, "device": str(device), "torch": torch.__version__}
    for name, values in times.items():
        ratio_best = min(values) / min(base)
        print(f"{name:<10}{1e3 * min(values):>10.2f}{1e3 * statistics.median(values):>11.2f}{ratio_best:>16.2f}"
              f"{statistics.median(paired[name]):>15.2f}")
        out[name] = {"best_ms": 1e3 * min(values), "median_ms": 1e3 * statistics.median(values),
                     "best_ratio": ratio_best, "paired_median_ratio": statistics.median(paired[name])}
    print(f"(power: one iteration of hessian_eigenvalues(max_iter={n}, tol=0), its session's setup included)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
