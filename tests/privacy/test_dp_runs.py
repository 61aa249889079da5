"""Differentially private runs: epsilon against dp-accounting's own numbers (tests/fixtures/dp_epsilon.json, made by
scripts/dp_accounting_reference.py), DP-FedAvg and DP-FedMut against float64 hand computations, the target epsilon,
a bit-for-bit resume, two workers equal to one process, and the refusals before training."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import Crash, TinyModule, state_of
from torch.utils.data import DataLoader

from lightning_fedmut import FederatedCallback, FederatedLoop, MutationCallback, make_clients
from lightning_fedmut import algorithms as algos
from lightning_fedmut.algorithms import FederatedAlgorithm
from lightning_fedmut.callbacks import FedMR, Scaffold
from lightning_fedmut.data import partition_iid
from lightning_fedmut.privacy import DifferentialPrivacy, DPAggregator
from lightning_fedmut.sampling import ClusteredSampler, PoissonSampler


def _quadratic_harness():
    """The float64 quadratic harness of the baselines' tests (tests/algorithms/test_baselines_quadratic.py)."""
    path = Path(__file__).resolve().parents[1] / "algorithms" / "test_baselines_quadratic.py"
    spec = importlib.util.spec_from_file_location("_baselines_quadratic_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_harness = _quadratic_harness()
W0, Quadratic, Recorder, local_sgd = _harness.W0, _harness.Quadratic, _harness.Recorder, _harness.local_sgd
quadratic_clients, weights = _harness.quadratic_clients, _harness.weights
distributed = pytest.importorskip("lightning_fedmut.distributed")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="workers are forked; tested on Linux")
FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "dp_epsilon.json").read_text())


class CountClients(FederatedCallback):
    def __init__(self):
        self.trained = 0

    def on_client_fit_start(self, loop, module, task):
        self.trained += 1


def run(synthetic, algorithm, rounds=5, clients_per_round=3, checkpoint_dir=None, ckpt_path=None, extra=(),
        executor=None):
    train, val = synthetic
    parts = partition_iid(len(train), FIXTURE["num_clients"], seed=0)
    torch.manual_seed(0)  # the same initial model in every run
    model = TinyModule(momentum=0.5)
    loop = FederatedLoop(rounds=rounds, clients_per_round=clients_per_round, local_steps=2, seed=0,
                         enable_progress_bar=False, checkpoint_dir=checkpoint_dir, algorithm=algorithm,
                         callbacks=list(extra), executor=executor)
    result = loop.fit(model, make_clients(train, parts, batch_size=8), val_dataloaders=DataLoader(val, batch_size=60),
                      ckpt_path=ckpt_path)
    return state_of(model), result


def dp_fedavg(**kwargs):
    settings = {"noise_multiplier": FIXTURE["noise_multiplier"], "clip_norm": 0.5, "delta": FIXTURE["delta"],
                "sampling_rate": FIXTURE["rate"], **kwargs}
    if not settings.get("poisson", True):
        settings.pop("sampling_rate")
    return algos.DPFedAvg(**settings)


# ---------------------------------------------------------------------------------------- accounting
@pytest.mark.parametrize(("case", "kwargs"), [
    ("poisson_rdp", {}),
    ("poisson_pld", {"accountant": "pld"}),
    ("fixed_rdp", {"poisson": False}),
])
def test_epsilon_each_round_is_dp_accountings_own_answer(synthetic, case, kwargs):
    _, result = run(synthetic, dp_fedavg(**kwargs), rounds=len(FIXTURE["rounds"]),
                    clients_per_round=FIXTURE["clients_per_round"])
    reported = [row["dp/epsilon"] for row in result.history]
    assert reported == pytest.approx(FIXTURE["epsilon"][case], rel=1e-9)
    assert {row["dp/delta"] for row in result.history} == {FIXTURE["delta"]}


def test_the_noise_multiplier_is_derived_from_a_target_epsilon(synthetic):
    """The planned 5 rounds at the fixture's epsilon after 5 rounds give back the fixture's z = 1.5."""
    target = FIXTURE["epsilon"]["poisson_rdp"][-1]
    _, result = run(synthetic, dp_fedavg(noise_multiplier=None, target_epsilon=target))
    assert result.history[0]["dp/noise_multiplier"] == pytest.approx(FIXTURE["noise_multiplier"], abs=2e-3)
    assert len(result.history) == 5 and result.history[-1]["dp/epsilon"] <= target


def test_target_epsilon_stops_the_run_before_it_would_be_exceeded_and_a_resume_does_not_pass_it(synthetic, tmp_path):
    """Fixture epsilons 1.06, 1.39, 1.64, 1.85 ...: a target of 1.7 allows 3 rounds of the 5 planned."""
    _, result = run(synthetic, dp_fedavg(target_epsilon=1.7), checkpoint_dir=tmp_path)
    assert [row["round"] for row in result.history] == [0, 1, 2]
    assert result.history[-1]["dp/epsilon"] == pytest.approx(FIXTURE["epsilon"]["poisson_rdp"][2], rel=1e-9)
    assert (tmp_path / "round-00003.ckpt").exists()
    counter = CountClients()
    with pytest.raises(ValueError, match=r"target_epsilon=1.7 while epsilon after round 3 would be 1.852"):
        run(synthetic, dp_fedavg(target_epsilon=1.7), checkpoint_dir=tmp_path, ckpt_path="last", extra=[counter])
    assert counter.trained == 0


def test_a_target_epsilon_the_first_round_exceeds_is_refused_before_training(synthetic):
    counter = CountClients()
    with pytest.raises(ValueError, match=r"got target_epsilon=1 while epsilon after round 0 would be 1.065"):
        run(synthetic, dp_fedavg(target_epsilon=1.0), extra=[counter])
    assert counter.trained == 0


# ---------------------------------------------------------------------------- against hand computations
def clip(u, c):
    return u * min(1.0, c / float(u.norm()))


def test_dp_fedavg_is_clipped_fedavg_over_the_expected_clients_in_float64():
    """Every client every round (K = N = 3, fixed size), C = 0.05, noise 1e-12 C / 3: the global model is
    w + sum_i clip(w_i - w) / 3, replayed by hand in float64."""
    module = Quadratic()
    algo = algos.DPFedAvg(noise_multiplier=1e-12, clip_norm=0.05, poisson=False)
    loop = FederatedLoop(rounds=3, clients_per_round=3, algorithm=algo, enable_progress_bar=False, seed=0)
    loop.fit(module, quadratic_clients())
    w = W0.clone()
    for _ in range(3):
        w = w + sum(clip(local_sgd(w, i) - w, 0.05) for i in range(3)) / 3
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-10)


def test_dp_fedmut_clips_each_client_against_its_mutated_start_model_in_float64():
    """w + sum_i (s_i - w + clip(local_sgd(s_i) - s_i)) / K, with s_i each slot's recorded (mutated) start model."""
    module, recorder = Quadratic(), Recorder()
    algo = algos.DPFedMut(noise_multiplier=1e-12, clip_norm=0.05, radius=2.0, acceleration=0.3)
    loop = FederatedLoop(rounds=3, clients_per_round=3, algorithm=algo, callbacks=[recorder],
                         enable_progress_bar=False, seed=0)
    loop.fit(module, quadratic_clients())
    w = W0.clone()
    for r in range(3):
        starts = [recorder.starts[(r, slot)] for slot in range(3)]
        clients = [recorder.clients[(r, slot)] for slot in range(3)]
        torch.testing.assert_close(starts[2], w, rtol=0, atol=1e-10)  # odd K: the last slot starts un-mutated
        if r > 0:
            assert not torch.allclose(starts[0], w)
        w = w + sum(s - w + clip(local_sgd(s, i) - s, 0.05) for s, i in zip(starts, clients)) / 3
    torch.testing.assert_close(weights(module), w, rtol=0, atol=1e-10)


def test_dp_composes_with_fedmut_and_a_server_optimizer_as_components(synthetic):
    algo = FederatedAlgorithm(aggregator=DPAggregator(algos.FedAdam().aggregator, noise_multiplier=1.0),
                              start_model=MutationCallback(radius=2.0), local=[DifferentialPrivacy()],
                              name="DP-FedMut-FedAdam")
    _, result = run(synthetic, algo, rounds=2)
    assert result.history[-1]["dp/epsilon"] > 0 and "fedadam/step_norm" in result.history[-1]


# ------------------------------------------------------------------------------------ resume and workers
def adaptive():
    return dp_fedavg(target_quantile=0.5, count_stddev=1.0)


def test_a_dp_run_resumes_bit_for_bit_after_a_crash_at_round_2(synthetic, tmp_path):
    expected, result = run(synthetic, adaptive(), rounds=4)
    with pytest.raises(RuntimeError, match="crash at round 2"):
        run(synthetic, adaptive(), rounds=4, checkpoint_dir=tmp_path, extra=[Crash(2)])
    resumed, resumed_result = run(synthetic, adaptive(), rounds=4, checkpoint_dir=tmp_path, ckpt_path="last")
    assert all(torch.equal(v, expected[k]) for k, v in resumed.items())
    assert resumed_result.history == result.history
    assert [row["dp/clip_norm"] for row in result.history][1:] != [0.5] * 3  # adaptive clipping moved C


@linux_only
@pytest.mark.slow
def test_two_workers_equal_one_process_bit_for_bit(synthetic):
    one, one_result = run(synthetic, adaptive(), rounds=3)
    two, two_result = run(synthetic, adaptive(), rounds=3,
                          executor=distributed.DistributedExecutor(workers=2, timeout=60.0))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert one_result.history == two_result.history


# -------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: algos.DPFedAvg(noise_multiplier=0.0), ValueError, r"Expected `noise_multiplier` in \(0.0, inf\), got 0.0"),
    (lambda: algos.DPFedAvg(clip_norm=-1.0), ValueError, r"Expected `clip_norm` in \(0.0, inf\), got -1.0"),
    (lambda: algos.DPFedAvg(delta=1.0), ValueError, r"Expected `delta` in \(0.0, 1.0\), got 1.0"),
    (lambda: algos.DPFedMut(delta=2.0), ValueError, r"Expected `delta` in \(0.0, 1.0\), got 2.0"),
    (lambda: algos.DPFedAvg(sampling_rate=1.5), ValueError, r"Expected `rate` in \(0.0, 1.0\], got 1.5"),
    (lambda: algos.DPFedAvg(poisson=False, sampling_rate=0.2), ValueError,
     r"Expected `sampling_rate`=None with poisson=False \(the uniform sampler draws `clients_per_round` clients\)"),
])
def test_bad_input_is_refused_when_the_method_is_built(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(("algorithm", "error", "message"), [
    (lambda: algos.DPFedAvg(poisson=False, accountant="pld"), ValueError,
     "Expected accountant='rdp' for fixed-size sampling"),
    (lambda: FederatedAlgorithm(aggregator=DPAggregator(), local=[DifferentialPrivacy()], sampler=ClusteredSampler()),
     ValueError, "got ClusteredSampler: the accountant knows the privacy amplification of Poisson sampling"),
    (lambda: FederatedAlgorithm(aggregator=DPAggregator(), local=[DifferentialPrivacy()],
                                start_model=MutationCallback(), sampler=PoissonSampler(0.3)),
     ValueError, "for MutationCallback, got PoissonSampler \\(fixed_size=False\\)"),
    (lambda: FederatedAlgorithm(start_model=FedMR(), sampler=PoissonSampler(0.3)), ValueError,
     "for FedMR, got PoissonSampler \\(fixed_size=False\\)"),
    (lambda: FederatedAlgorithm(aggregator=DPAggregator(), local=[DifferentialPrivacy()], start_model=FedMR()),
     TypeError, "Expected no FedMR with DifferentialPrivacy"),
    (lambda: FederatedAlgorithm(aggregator=DPAggregator(), local=[DifferentialPrivacy(), Scaffold()]),
     TypeError, "Expected no Scaffold with DifferentialPrivacy"),
    (lambda: FederatedAlgorithm(local=[DifferentialPrivacy()]), TypeError,
     "Expected the loop's aggregator to be a DPAggregator"),
    (lambda: FederatedAlgorithm(aggregator=DPAggregator(noise_multiplier=None), local=[DifferentialPrivacy()]),
     ValueError, "Expected a `noise_multiplier` on the DPAggregator or a `target_epsilon`"),
    (lambda: dp_fedavg(target_quantile=0.5), ValueError,
     r"Expected `count_stddev` > noise_multiplier / 2 = 0.75 .*got 0.15"),
])
def test_combinations_the_accountant_cannot_cover_are_refused_before_training(synthetic, algorithm, error, message):
    counter = CountClients()
    with pytest.raises(error, match=message):
        run(synthetic, algorithm(), extra=[counter])
    assert counter.trained == 0


def test_a_poisson_round_without_clients_is_skipped_and_still_counted(synthetic):
    """The loop skips a round that trained nobody (global model unchanged, no noise released); the accountant
    charges it all the same."""
    torch.manual_seed(0)
    initial = state_of(TinyModule(momentum=0.5))
    with pytest.warns(RuntimeWarning, match="Round 0: 0 of 0 clients succeeded"):
        final, result = run(synthetic, dp_fedavg(sampling_rate=0.01), rounds=3)
    assert [row["round_skipped"] for row in result.history] == [1, 1, 1]
    assert all(torch.equal(final[k], initial[k]) for k in final)
    epsilons = [row["dp/epsilon"] for row in result.history]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3


def test_floating_buffers_keep_their_global_values_with_a_warning(synthetic):
    """BatchNorm's running statistics are not released (noise would turn a running variance negative): they stay at
    the initial values, and the run says so."""
    train, _ = synthetic
    model = TinyModule(batch_norm=True)
    initial = state_of(model)
    loop = FederatedLoop(rounds=2, clients_per_round=3, local_steps=2, seed=0, enable_progress_bar=False,
                         algorithm=dp_fedavg(poisson=False))
    with pytest.warns(UserWarning, match=r"floating buffers \['net.1.running_mean', 'net.1.running_var'\] keep"):
        loop.fit(model, make_clients(train, partition_iid(len(train), 10, seed=0), batch_size=8))
    final = state_of(model)
    for key in ("net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked"):
        assert torch.equal(final[key], initial[key])
    assert not torch.equal(final["net.1.weight"], initial["net.1.weight"])
