"""GPU checks of the federated loop: CUDA runs, mixed precision, seeding and resume on the GPU, timings.

Run on a machine with a CUDA GPU:  python scripts/gpu_check.py --out gpu_check.json
(``--accelerator cpu`` runs the same checks on the CPU, as a dry run; ``--accelerator cpu --quick`` in under a
minute.)

Besides the checks it measures, on the GPU:

* ``scaling``: clients per second with 1, 2 and 4 workers sharing the one GPU (``workers=N,
  workers_per_device=N``), fp32 and ``bf16-mixed``, on the small ResNet of ``benchmarks/peers.py`` (workload C,
  wider and with more data per client). Each case runs in a fresh process (forked workers cannot use a CUDA
  context that already exists); the rate is timed from the end of the first round to the end of the last, so
  the workers' start-up and the first round's warm-up are left out.
* ``client_overhead``: what ``FederatedLoop`` costs per client over a plain-PyTorch loop on the same device
  (the same FedAvg on digits, one batch per client, alternating runs), in ms per client.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

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


def peers_module() -> ModuleType:
    """``benchmarks/peers.py`` (its workloads, and ``overhead.py``'s runners through it)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"
    spec = importlib.util.spec_from_file_location("peers_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.overhead.silence_lightning_console()
    return module


class RoundClock(FederatedCallback):
    """The wall-clock time at the end of every round (in rank 0, the process that called ``fit``)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_round_end(self, loop, module):
        self.ends.append(time.perf_counter())


def scaling_case(accelerator: str, workers: int, precision: str, quick: bool) -> dict:
    """Clients/s of FedAvg on the small ResNet with ``workers`` processes sharing one device (one case).

    32 clients of 256 generated images, 8 a round, 2 local epochs of batch 64 (8 steps per client), width 64;
    ``quick``: 16 images per client, one batch, width 4.
    """
    peers = peers_module()
    rounds, width, per_client, batch, epochs = (2, 4, 16, 16, 1) if quick else (4, 64, 256, 64, 2)
    wl = peers.workload_c(rounds=rounds, width=width, clients=32, per_client=per_client, batch_size=batch,
                          local_epochs=epochs)
    wl = dataclasses.replace(wl, clients_per_round=8)
    torch.manual_seed(0)
    model = wl.make_model()
    clock = RoundClock()
    loop = FederatedLoop(rounds=rounds, clients_per_round=wl.clients_per_round, local_epochs=wl.local_epochs,
                         aggregator=FedAvg(weighted=False), seed=0, enable_progress_bar=False, callbacks=[clock],
                         workers=workers if workers > 1 else None, workers_per_device=workers,
                         trainer_kwargs={"accelerator": accelerator, "precision": precision})
    start = time.perf_counter()
    result = loop.fit(model, wl.clients, val_dataloaders=wl.val_loader)
    total = time.perf_counter() - start
    timed = clock.ends[-1] - clock.ends[0]
    return {"workers": workers, "precision": precision, "rounds": rounds, "clients_per_round": wl.clients_per_round,
            "steps_per_client": wl.steps_per_client, "width": width,
            "clients_per_s": round((rounds - 1) * wl.clients_per_round / timed, 3),
            "fit_s": round(total, 3), "first_round_s": round(clock.ends[0] - start, 3),
            "val_acc": round(float(result.metric("val_acc")[-1]), 4)}


def scaling(accelerator: str, quick: bool) -> list:
    """Every (workers, precision) case in a process of its own; a failing case is reported, not raised."""
    rows = []
    precisions = ("32-true",) if accelerator == "cpu" else ("32-true", "bf16-mixed")
    for precision in precisions:
        for workers in (1, 2, 4):
            cmd = [sys.executable, __file__, "--accelerator", accelerator, "--scaling-case",
                   f"{workers},{precision}", *(["--quick"] if quick else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                rows.append(json.loads(lines[-1]))
            else:
                rows.append({"workers": workers, "precision": precision,
                             "error": (proc.stderr or proc.stdout)[-2000:]})
            print(rows[-1], flush=True)
    base = {r["precision"]: r["clients_per_s"] for r in rows if r["workers"] == 1 and "clients_per_s" in r}
    for r in rows:
        if "clients_per_s" in r and r["precision"] in base:
            r["speedup_vs_1_worker"] = round(r["clients_per_s"] / base[r["precision"]], 3)
    return rows


def plain_fedavg(peers: ModuleType, wl, device: torch.device) -> dict:
    """``overhead.py``'s plain-PyTorch FedAvg, on ``device``: same sampling, seeds, optimizer and average."""
    ov = peers.overhead
    model = ov.fresh_model(wl).to(device)
    working = ov.fresh_model(wl).to(device)
    sampler = torch.Generator().manual_seed(ov.derive_seed(ov.SEED, ov.SAMPLING_STREAM))
    for r in range(wl.rounds):
        sums = None
        chosen = ov._sample(sampler, wl)
        for i in chosen:
            working.load_state_dict(model.state_dict())
            ov._seed_client(r, i)
            optimizer = working.configure_optimizers()
            working.train()
            for _ in range(wl.local_epochs):
                for x, y in wl.clients[i].data:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    optimizer.zero_grad()
                    ov._plain_loss(working, x, y).backward()
                    optimizer.step()
            sums = ov._accumulate(sums, working, 1.0)
        ov._write_average(model, sums, float(len(chosen)))
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in wl.val_loader:
                x, y = x.to(device), y.to(device)
                correct, n = correct + int((model(x).argmax(1) == y).sum()), n + len(y)
        model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"val_acc": correct / n}


def client_overhead(accelerator: str, quick: bool) -> dict:
    """ms per client that ``FederatedLoop`` adds to the plain loop on the same device (digits, 1 batch/client)."""
    peers = peers_module()
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") else accelerator)
    wl = peers.workload_b(rounds=1 if quick else 5)
    peers.overhead.FEDLOOP_KWARGS.update(enable_progress_bar=False, trainer_kwargs={"accelerator": accelerator})
    runs = {"fedloop": peers.overhead.run_fedloop, "torch": lambda w: plain_fedavg(peers, w, device)}
    for run in runs.values():  # warm-up: CUDA context, kernels, allocator
        run(dataclasses.replace(wl, rounds=1))
    seconds: dict = {m: [] for m in runs}
    acc = {}
    for order in peers.rotations(list(runs), 1 if quick else 10):
        for m in order:
            start = time.perf_counter()
            acc[m] = runs[m](wl)["val_acc"]
            seconds[m].append(time.perf_counter() - start)
    clients = wl.rounds * wl.clients_per_round
    per_client = [1e3 * (f - t) / clients for f, t in zip(seconds["fedloop"], seconds["torch"])]
    return {"rounds": wl.rounds, "clients": clients, "repeats": len(per_client),
            "fedloop_ms_per_client_median": round(1e3 * statistics.median(seconds["fedloop"]) / clients, 3),
            "torch_ms_per_client_median": round(1e3 * statistics.median(seconds["torch"]) / clients, 3),
            "overhead_ms_per_client_median": round(statistics.median(per_client), 3),
            "overhead_ms_per_client_sd": round(statistics.stdev(per_client), 3) if len(per_client) > 1 else 0.0,
            "val_acc": {m: round(float(a), 4) for m, a in acc.items()}}


def max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def write(report: dict, out: str, final: bool = True) -> None:
    """Write the report to ``out`` (also after each section, so a run cut short keeps what it measured)."""
    text = json.dumps(report, indent=1)
    if final:
        print(text)
    Path(out).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--deterministic-only", action="store_true",
                        help="only check repeatability and resume with trainer_kwargs deterministic=True")
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds, a narrower ResNet and fewer repeats (a dry run on the CPU in under a minute)")
    parser.add_argument("--no-timings", action="store_true", help="skip the scaling and per-client overhead figures")
    parser.add_argument("--timings-only", action="store_true", help="only the scaling and per-client overhead figures")
    parser.add_argument("--scaling-case", metavar="WORKERS,PRECISION", help=argparse.SUPPRESS)  # one case, one process
    args = parser.parse_args()
    torch.set_num_threads(1)
    acc = args.accelerator
    if args.scaling_case:
        workers, precision = args.scaling_case.split(",")
        print(json.dumps(scaling_case(acc, int(workers), precision, args.quick)))
        return
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
        write(report, args.out)
        return

    if not args.no_timings:
        report["scaling"] = scaling(acc, args.quick)  # first: each case in a process of its own
        write(report, args.out, final=False)
        report["client_overhead"] = client_overhead(acc, args.quick)
        write(report, args.out, final=False)
    if args.timings_only:
        write(report, args.out)
        return
    if args.quick:  # one short FedMut run stands for the checks
        report["fp32"], _ = run(acc, rounds=1)
        write(report, args.out)
        return
    report["fp32"], s1 = run(acc)
    report["fp32_repeat"], s2 = run(acc)
    report["same_seed_max_abs_diff"] = max_diff(s1, s2)
    report["fedavg_fp32"], _ = run(acc, method="fedavg")
    write(report, args.out, final=False)
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
    write(report, args.out, final=False)

    # a wider model, where the GPU has work to do: CPU (1 thread) against GPU, same job
    report["wide_cpu"], _ = run("cpu", rounds=3, width=128)
    report["wide_gpu"], _ = run(acc, rounds=3, width=128)

    write(report, args.out)


if __name__ == "__main__":
    main()
