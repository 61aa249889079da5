"""GPU checks of the federated loop: CUDA runs, mixed precision, seeding and resume on the GPU, timings.

Run on a machine with a CUDA GPU:  python scripts/gpu_check.py --out gpu_check.json
(``--accelerator cpu`` runs the same checks on the CPU, as a dry run.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lightning_fedmut import FedAvg, FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut.data import partition_dirichlet
from lightning_fedmut.datasets import labels_of, load_digits_split
from lightning_fedmut.models import DigitsCNN


class Crash(FederatedCallback):
    def __init__(self, at_round: int) -> None:
        self.at_round = at_round

    def on_round_start(self, loop, module):
        if loop.round == self.at_round:
            raise RuntimeError("planned crash")


class Devices(FederatedCallback):
    """Records where the working module trains and where the global module lives."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def on_client_fit_end(self, loop, module, result):
        self.seen.add(f"client_end:{next(iter(result.state.values())).device}")

    def on_after_aggregate(self, loop, module):
        self.seen.add(f"global:{next(module.parameters()).device}")


def run(accelerator, precision="32-true", rounds=5, seed=0, method="fedmut", ckpt_dir=None, crash_at=None,
        resume=False, width=16, extra=(), deterministic=False):
    train, test = load_digits_split()
    parts = partition_dirichlet(labels_of(train), num_clients=20, alpha=0.1, min_size=10, seed=seed)
    clients = make_clients(train, parts, batch_size=50)
    torch.manual_seed(seed)
    model = DigitsCNN(width=width)
    callbacks = [MutationCallback(radius=4.0, acceleration=0.3)] if method == "fedmut" else []
    devices = Devices()
    callbacks += [devices, *extra]
    if crash_at is not None:
        callbacks.append(Crash(crash_at))
    loop = FederatedLoop(rounds=rounds, clients_per_round=10, local_epochs=5, aggregator=FedAvg(weighted=False),
                         callbacks=callbacks, seed=seed, enable_progress_bar=False,
                         trainer_kwargs={"accelerator": accelerator, "precision": precision,
                                         "deterministic": deterministic},
                         checkpoint_dir=ckpt_dir)
    start = time.perf_counter()
    result = loop.fit(model, clients, val_dataloaders=DataLoader(test, batch_size=500),
                      ckpt_path="last" if resume else None)
    elapsed = time.perf_counter() - start
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"acc": [round(a, 4) for a in result.metric("val_acc")], "seconds": round(elapsed, 2),
            "devices": sorted(devices.seen), "finite": all(torch.isfinite(v).all().item()
                                                           for v in state.values() if v.is_floating_point())}, state


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--deterministic-only", action="store_true",
                        help="only check repeatability and resume with trainer_kwargs deterministic=True")
    args = parser.parse_args()
    torch.set_num_threads(1)
    acc = args.accelerator
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}

    if args.deterministic_only:
        report["det"], d1 = run(acc, deterministic=True)
        report["det_repeat"], d2 = run(acc, deterministic=True)
        report["det_same_seed_bitwise_equal"] = all(torch.equal(d1[k], d2[k]) for k in d1)
        with tempfile.TemporaryDirectory() as d:
            with contextlib.suppress(RuntimeError):  # the crash the resume starts from
                run(acc, ckpt_dir=Path(d), crash_at=3, deterministic=True)
            report["det_resumed"], d3 = run(acc, ckpt_dir=Path(d), resume=True, deterministic=True)
        report["det_resume_bitwise_equal"] = all(torch.equal(d1[k], d3[k]) for k in d1)
        text = json.dumps(report, indent=1)
        print(text)
        Path(args.out).write_text(text)
        return

    report["fp32"], s1 = run(acc)
    report["fp32_repeat"], s2 = run(acc)
    report["same_seed_max_abs_diff"] = max_diff(s1, s2)
    report["fedavg_fp32"], _ = run(acc, method="fedavg")
    for precision in ("16-mixed", "bf16-mixed"):
        try:
            report[precision], _ = run(acc, precision=precision)
        except Exception as exc:  # noqa: BLE001 - report, do not stop the other checks
            report[precision] = f"{type(exc).__name__}: {exc}"

    with tempfile.TemporaryDirectory() as d:
        with contextlib.suppress(RuntimeError):  # the crash the resume starts from
            run(acc, ckpt_dir=Path(d), crash_at=3)
        report["resumed"], s3 = run(acc, ckpt_dir=Path(d), resume=True)
    report["resume_max_abs_diff"] = max_diff(s1, s3)
    report["resume_bitwise_equal"] = all(torch.equal(s1[k], s3[k]) for k in s1)

    # a wider model, where the GPU has work to do: CPU (1 thread) against GPU, same job
    report["wide_cpu"], _ = run("cpu", rounds=3, width=128)
    report["wide_gpu"], _ = run(acc, rounds=3, width=128)

    text = json.dumps(report, indent=1)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
