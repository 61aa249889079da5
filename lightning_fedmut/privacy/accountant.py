"""Privacy accounting with dp-accounting's RDP and PLD accountants: epsilon after some rounds, and the noise
multiplier for a target epsilon. No formula of this library's own: every number comes from dp-accounting.

A round of central DP is the Gaussian mechanism on the sum of the sampled clients' clipped updates (clipping norm
``C``, noise ``N(0, (z C)^2)``), subsampled as the sampler draws the clients:

- **Poisson sampling** (:class:`~lightning_fedmut.sampling.PoissonSampler`, each client with probability ``q``):
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under add-or-remove-one-client, with the RDP or the PLD
  accountant.
- **Fixed-size sampling** (:class:`~lightning_fedmut.sampling.UniformSampler`, ``K`` of ``N`` clients without
  replacement): ``SampledWithoutReplacementDpEvent(N, K, GaussianDpEvent(z / 2))`` under replace-one-client, with
  the RDP accountant only (dp-accounting's PLD accountant has no such event). Replacing one client's data moves the
  sum by up to ``2 C``, hence ``z / 2``: the accountant's noise multiplier is relative to the sensitivity.

Each round composes once (``SelfComposedDpEvent``), whether or not it trained anyone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from lightning_fedmut.utilities.validation import check_int, check_real

if TYPE_CHECKING:
    from lightning_fedmut.sampling import ClientSampler

__all__ = ["ACCOUNTANTS", "MIN_NOISE_MULTIPLIER", "PrivacyAccountant", "Sampling", "sampling_of"]

#: The accountants of dp-accounting this module drives.
ACCOUNTANTS = ("rdp", "pld")
#: The smallest noise multiplier :meth:`PrivacyAccountant.noise_multiplier` tries: below it epsilon is large, and the
#: PLD accountant's discretised loss distribution would not fit in memory.
MIN_NOISE_MULTIPLIER = 0.2


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting's RDP accountant logs a warning for each fractional order whose series does not converge (it
    leaves that order out, as it says); one per order per call would flood a run's console."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dp_accounting() -> Any:
    try:
        import dp_accounting
    except ImportError as err:  # pragma: no cover - the extra is installed in the test environment
        raise ImportError("Privacy accounting needs dp-accounting: `pip install 'lightning_fedmut[privacy]'`"
                          " (or `pip install dp-accounting`).") from err
    return dp_accounting


class Sampling(NamedTuple):
    """How the clients of a round are drawn, as far as the accountant is concerned.

    Attributes:
        kind: ``"poisson"`` (each client independently with probability ``rate``) or ``"fixed"`` (``size``
            clients uniformly without replacement).
        population: ``N``, the number of clients in the federation.
        rate: ``q``: the probability of a client to be drawn in a round (``size / N`` for fixed-size sampling).
        size: ``K`` for fixed-size sampling, ``None`` for Poisson sampling.

    Examples:
        >>> Sampling("poisson", 100, 0.1).expected_clients, Sampling("fixed", 100, 0.1, 10).expected_clients
        (10.0, 10.0)
    """

    kind: str
    population: int
    rate: float
    size: int | None = None

    @property
    def expected_clients(self) -> float:
        """The expected number of clients of a round: ``q N`` or ``K``; the noised sum is divided by it."""
        return float(self.size) if self.size is not None else self.rate * self.population


def sampling_of(sampler: ClientSampler, num_clients: int, clients_per_round: int) -> Sampling:
    """The :class:`Sampling` of ``sampler`` in a federation of ``num_clients``, or an error that says why the
    accountant cannot cover it.

    Examples:
        >>> from lightning_fedmut.sampling import PoissonSampler, UniformSampler
        >>> sampling_of(PoissonSampler(rate=0.05), 200, 10)
        Sampling(kind='poisson', population=200, rate=0.05, size=None)
        >>> sampling_of(UniformSampler(), 200, 10)
        Sampling(kind='fixed', population=200, rate=0.05, size=10)
    """
    from lightning_fedmut.sampling import PoissonSampler, UniformSampler

    if type(sampler) is PoissonSampler:
        return Sampling("poisson", num_clients, sampler.rate_for(num_clients, clients_per_round))
    if type(sampler) is UniformSampler:
        return Sampling("fixed", num_clients, clients_per_round / num_clients, clients_per_round)
    raise ValueError(
        f"Expected the sampler of a differentially private run to be a PoissonSampler or a UniformSampler, got"
        f" {type(sampler).__name__}: the accountant knows the privacy amplification of Poisson sampling and of"
        " uniform sampling without replacement only; a sampler that chooses clients otherwise (by their data, their"
        " updates, or with another law) has none it can vouch for.")


class PrivacyAccountant:
    r"""Epsilon of ``rounds`` rounds of the subsampled Gaussian mechanism, from dp-accounting.

    Args:
        accountant: ``"rdp"`` (``RdpAccountant``, Poisson and fixed-size sampling) or ``"pld"``
            (``PLDAccountant``, tighter, Poisson sampling only).
        delta: the ``delta`` epsilon is reported for, in ``(0, 1)``.

    Examples:
        >>> accountant = PrivacyAccountant("rdp", delta=1e-5)
        >>> poisson = Sampling("poisson", population=100, rate=0.1)
        >>> round(accountant.epsilon(1.0, poisson, rounds=10), 4) == round(accountant.epsilon(1.0, poisson, 10), 4)
        True
        >>> accountant.epsilon(1.0, poisson, rounds=0)
        0.0
        >>> PrivacyAccountant("pld").check(Sampling("fixed", 100, 0.1, 10))
        Traceback (most recent call last):
        ...
        ValueError: Expected accountant='rdp' for fixed-size sampling (K of N clients without replacement), got accountant='pld': dp-accounting's PLD accountant has no event for sampling without replacement. Use accountant='rdp', or a PoissonSampler.
    """

    def __init__(self, accountant: str = "rdp", delta: float = 1e-5) -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"Expected `accountant` in {list(ACCOUNTANTS)}, got {accountant!r}.")
        self.accountant = accountant
        self.delta = check_real("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
        self._curves: dict[tuple[float, Sampling], tuple[Any, Any]] = {}

    def check(self, sampling: Sampling) -> None:
        """Refuse, with the reason, a sampling this accountant cannot cover."""
        if sampling.kind == "fixed" and self.accountant == "pld":
            raise ValueError(
                "Expected accountant='rdp' for fixed-size sampling (K of N clients without replacement), got"
                " accountant='pld': dp-accounting's PLD accountant has no event for sampling without replacement."
                " Use accountant='rdp', or a PoissonSampler.")
        if sampling.kind not in ("poisson", "fixed"):
            raise ValueError(f"Expected a sampling kind 'poisson' or 'fixed', got {sampling.kind!r}.")

    def event(self, noise_multiplier: float, sampling: Sampling, rounds: int) -> Any:
        """The dp-accounting event of ``rounds`` rounds (see the module's description)."""
        dp = _dp_accounting()
        if sampling.kind == "poisson":
            one = dp.PoissonSampledDpEvent(sampling.rate, dp.GaussianDpEvent(noise_multiplier))
        else:
            one = dp.SampledWithoutReplacementDpEvent(sampling.population, sampling.size,
                                                      dp.GaussianDpEvent(noise_multiplier / 2))
        return dp.SelfComposedDpEvent(one, rounds)

    def fresh(self, sampling: Sampling) -> Any:
        """A new dp-accounting accountant for ``sampling``'s neighbouring relation."""
        dp = _dp_accounting()
        self.check(sampling)
        relation = (dp.NeighboringRelation.ADD_OR_REMOVE_ONE if sampling.kind == "poisson"
                    else dp.NeighboringRelation.REPLACE_ONE)
        if self.accountant == "rdp":
            return dp.rdp.RdpAccountant(neighboring_relation=relation)
        return dp.pld.PLDAccountant(neighboring_relation=relation)

    def epsilon(self, noise_multiplier: float, sampling: Sampling, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds with noise multiplier ``noise_multiplier``.

        RDP composes linearly: the RDP accountant's curve of one round is computed once (per noise multiplier and
        sampling) and ``rounds`` times it goes to dp-accounting's ``compute_epsilon``, the numbers
        ``RdpAccountant.get_epsilon`` returns after composing ``SelfComposedDpEvent(round, rounds)``. PLD composes
        the distribution ``rounds`` times afresh on each call.
        """
        rounds = check_int("rounds", rounds, low=0)
        if rounds == 0:
            return 0.0
        with _quiet_absl():
            if self.accountant == "rdp":
                orders, curve = self._rdp_of_one_round(noise_multiplier, sampling)
                rdp = _dp_accounting().rdp.rdp_privacy_accountant
                return float(rdp.compute_epsilon(orders, rounds * curve, self.delta)[0])
            accountant = self.fresh(sampling)
            accountant.compose(self.event(noise_multiplier, sampling, rounds))
            return float(accountant.get_epsilon(self.delta))

    def _rdp_of_one_round(self, noise_multiplier: float, sampling: Sampling) -> tuple[Any, Any]:
        key = (noise_multiplier, sampling)
        if key not in self._curves:
            accountant = self.fresh(sampling)
            accountant.compose(self.event(noise_multiplier, sampling, 1))
            self._curves = {key: (accountant.orders, accountant.rdp)}  # the latest only: a run has one
        return self._curves[key]

    def noise_multiplier(self, target_epsilon: float, sampling: Sampling, rounds: int) -> float:
        """The smallest noise multiplier whose epsilon after ``rounds`` rounds is at most ``target_epsilon``
        (dp-accounting's ``calibrate_dp_mechanism``, searched from :data:`MIN_NOISE_MULTIPLIER` up, to a tolerance
        of 1e-4)."""
        dp = _dp_accounting()
        target_epsilon = check_real("target_epsilon", target_epsilon, low=0.0, low_open=True)
        rounds = check_int("rounds", rounds, low=1)
        self.check(sampling)
        with _quiet_absl():
            return float(dp.calibrate_dp_mechanism(
                lambda: self.fresh(sampling), lambda z: self.event(z, sampling, rounds), target_epsilon, self.delta,
                dp.LowerEndpointAndGuess(MIN_NOISE_MULTIPLIER, 1.0), tol=1e-4))
