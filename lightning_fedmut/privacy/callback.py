"""DifferentialPrivacy: the client half of central DP (each update clipped where the client trains) and the
accounting (epsilon every round, a target epsilon that stops the run, a noise multiplier derived from it)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.functional.state import snapshot
from lightning_fedmut.privacy.accountant import PrivacyAccountant, Sampling, sampling_of
from lightning_fedmut.privacy.aggregator import UNCLIPPED_KEY, DPAggregator, private_keys
from lightning_fedmut.privacy.functional import global_norm
from lightning_fedmut.utilities.seed import PRIVACY_STREAM, derive_seed
from lightning_fedmut.utilities.validation import check_real
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

__all__ = ["DifferentialPrivacy"]


class DifferentialPrivacy(LocalCallback):
    r"""User-level central DP with a :class:`~lightning_fedmut.privacy.DPAggregator`: clipping and accounting.

    **Where the client trains**, the client's update ``u = w - s`` (trained minus start model, over the trainable
    parameters the aggregator releases) is clipped to the aggregator's clipping norm ``C`` before the result leaves:
    ``w`` becomes ``s + u min(1, C / |u|)``, and the payload says whether ``|u| <= C`` (for adaptive clipping). The
    start model ``s`` is the one the client really started from: with FedMut, its mutated start model, so the
    update is the client's own change. A callback runs its ``on_client_fit_start`` after the start-model component,
    so ``s`` is read after the mutation; one model-sized buffer holds it while the client trains.

    **On the server**, at setup: the sampler must be one the accountant covers
    (:func:`~lightning_fedmut.privacy.accountant.sampling_of`: a :class:`~lightning_fedmut.sampling.PoissonSampler`,
    or a :class:`~lightning_fedmut.sampling.UniformSampler` with ``accountant="rdp"``); the aggregator learns the
    expected number of clients, its noise generator is seeded from the loop's seed, and, with
    ``noise_multiplier=None`` on the aggregator, the noise multiplier is the smallest whose epsilon after the
    planned ``rounds`` is ``target_epsilon``. Every round then reports ``dp/epsilon``: epsilon at ``delta`` once the
    round is done (every round counts, a skipped one too), computed by dp-accounting. With ``target_epsilon``, the
    run stops (``loop.should_stop``, after a checkpoint) before the round whose epsilon would exceed it; a run
    started or resumed where the next round would exceed it is refused before training.

    What is covered: the global models the server releases (and anything computed from them). What is not: the
    per-client rows of the history and the client table (each client's own training metrics), which a run logs
    for the server's operator; the clients' failures and timings.

    Args:
        delta: the ``delta`` of the reported epsilon, in ``(0, 1)``; below ``1 / N`` is the usual choice.
        target_epsilon: stop before epsilon would exceed it; with the aggregator's ``noise_multiplier=None``, derive
            the noise multiplier from it and the planned rounds.
        accountant: ``"rdp"`` or ``"pld"`` (dp-accounting's accountants; PLD is tighter, Poisson sampling only).

    Examples:
        >>> DifferentialPrivacy(delta=1e-5, target_epsilon=4.0).hparams
        {'delta': 1e-05, 'target_epsilon': 4.0, 'accountant': 'rdp'}
        >>> DifferentialPrivacy(delta=1.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `delta` in (0.0, 1.0), got 1.0.
    """

    #: Shown beside the validation metrics on the progress bar and each round's line.
    progress_bar_metrics = ("dp/epsilon",)

    def __init__(self, delta: float = 1e-5, target_epsilon: float | None = None, accountant: str = "rdp") -> None:
        self._accountant = PrivacyAccountant(accountant, delta)
        self.delta = self._accountant.delta
        self.accountant = accountant
        self.target_epsilon = None if target_epsilon is None else check_real(
            "target_epsilon", target_epsilon, low=0.0, high=math.inf, low_open=True, high_open=True)
        self.sampling: Sampling | None = None
        self._aggregator: DPAggregator | None = None
        self._keys: list[str] = []
        self._start: list[Tensor] = []
        self._epsilons: dict[int, float] = {}
        self._figures: dict[str, float]
        self.add_state("_figures", {}, scope="round")

    # ------------------------------------------------------------------ accounting
    @property
    def noise_multiplier(self) -> float:
        """``z`` as the run uses it (given to the aggregator, or derived from ``target_epsilon``)."""
        if self._aggregator is None or self._aggregator.effective_noise_multiplier is None:
            raise RuntimeError("DifferentialPrivacy.noise_multiplier is known once `fit` has set the callback up.")
        return self._aggregator.effective_noise_multiplier

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds of this run (dp-accounting's answer, cached)."""
        if rounds not in self._epsilons:
            assert self.sampling is not None, "setup reads the sampling"
            self._epsilons[rounds] = self._accountant.epsilon(self.noise_multiplier, self.sampling, rounds)
        return self._epsilons[rounds]

    def rounds_within(self, target_epsilon: float, low: int, high: int) -> int:
        """The most rounds in ``[low, high]`` whose epsilon is at most ``target_epsilon`` (epsilon grows with the
        rounds: a bisection, ``epsilon(low)`` assumed within)."""
        while low < high:
            middle = (low + high + 1) // 2
            if self.epsilon(middle) <= target_epsilon:
                low = middle
            else:
                high = middle - 1
        return low

    def metrics(self) -> dict[str, float]:
        """The round's ``dp/epsilon`` (spent once the round is done), ``dp/delta`` and ``dp/noise_multiplier``."""
        return dict(self._figures)

    # ------------------------------------------------------------------ server hooks
    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        aggregator = loop.aggregator
        if not isinstance(aggregator, DPAggregator):
            raise TypeError(f"Expected the loop's aggregator to be a DPAggregator (it adds the noise this callback"
                            f" accounts for), got {type(aggregator).__name__}.")
        self._aggregator = aggregator
        _refuse_unprotected(loop)
        self.sampling = sampling_of(loop.sampler, loop.num_clients, loop.clients_per_round)
        self._accountant.check(self.sampling)
        aggregator.expected_clients = self.sampling.expected_clients
        aggregator.seed_generator(derive_seed(loop.seed, PRIVACY_STREAM))
        self._epsilons = {}
        if aggregator.noise_multiplier is None:
            if self.target_epsilon is None:
                raise ValueError("Expected a `noise_multiplier` on the DPAggregator or a `target_epsilon` here to"
                                 " derive it from, got neither.")
            aggregator.effective_noise_multiplier = self._accountant.noise_multiplier(
                self.target_epsilon, self.sampling, loop.rounds)
        else:
            aggregator.effective_noise_multiplier = aggregator.noise_multiplier
        aggregator.update_noise_multiplier()  # adaptive clipping: refuses a count noise that leaves no budget
        self._keys = private_keys(module)

    def on_fit_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self.target_epsilon is None:
            return
        done = loop.progress.rounds_done
        upcoming = self.epsilon(done + 1)
        if upcoming > self.target_epsilon:
            spent = self.epsilon(done)
            raise ValueError(
                f"Expected `target_epsilon` above the epsilon of the next round, got target_epsilon="
                f"{self.target_epsilon:g} while epsilon after round {done} would be {upcoming:.4g} (spent after"
                f" {done} rounds: {spent:.4g}; noise multiplier {self.noise_multiplier:.4g}, delta {self.delta:g}):"
                " the privacy budget does not allow another round. Raise `target_epsilon` or the noise multiplier.")
        last = self.rounds_within(self.target_epsilon, done, loop.rounds)
        if last < loop.rounds and loop.is_global_zero:
            warn_user(f"DifferentialPrivacy: target_epsilon={self.target_epsilon:g} allows {last} of the {loop.rounds}"
                      f" planned rounds (epsilon after {last}: {self.epsilon(last):.4g}); the run will stop there.")

    def on_round_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        self._figures = {"dp/epsilon": self.epsilon(loop.round + 1), "dp/delta": self.delta,
                         "dp/noise_multiplier": self.noise_multiplier}

    def on_round_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        after = loop.round + 1  # rounds done once this one completes
        if self.target_epsilon is not None and after < loop.rounds and self.epsilon(after + 1) > self.target_epsilon:
            loop.should_stop = True

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._start = []

    # ------------------------------------------------------------------ client hooks
    @torch.no_grad()
    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        self._start = snapshot(self._start, [task.start_state[k] for k in self._keys])

    @torch.no_grad()
    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        assert result.state is not None and self._aggregator is not None  # a client that trained, after setup
        clip = self._aggregator.clip_norm
        trained = [result.state[k] for k in self._keys]
        torch._foreach_sub_(self._start, trained)  # s - w = -u, in the start buffer
        norm = global_norm(self._start)
        if norm > clip:  # w - (1 - C/|u|) u = s + u C/|u|
            torch._foreach_add_(trained, self._start, alpha=1.0 - clip / norm)
        result.payload[UNCLIPPED_KEY] = 1.0 if norm <= clip else 0.0




def _refuse_unprotected(loop: FederatedLoop) -> None:
    """Refuse the components whose messages or start models the noise does not cover."""
    from lightning_fedmut.callbacks.fedmr import FedMR
    from lightning_fedmut.callbacks.scaffold import Scaffold

    for cb in loop.callbacks:
        if isinstance(cb, FedMR):
            raise TypeError("Expected no FedMR with DifferentialPrivacy, got FedMR: its start models recombine the"
                            " clients' own trained models, which are never released, so the noise would not cover"
                            " them (FedMut's start models are functions of released global models: use FedMut).")
        if isinstance(cb, Scaffold):
            raise TypeError("Expected no Scaffold with DifferentialPrivacy, got Scaffold: each client sends its"
                            " control-variate update beside its model, unclipped and without noise.")
