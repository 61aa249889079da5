"""DPAggregator: the server half of user-level central DP (DP-FedAvg, McMahan et al., ICLR 2018), around any
uniform aggregator."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import Module

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.aggregators.fedopt import ServerOptimizer
from lightning_fedmut.functional.state import frozen_keys, is_floating
from lightning_fedmut.privacy.functional import adaptive_clip_norm, add_gaussian_noise_, update_noise_multiplier
from lightning_fedmut.utilities.validation import check_int, check_real
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning_fedmut.tasks import ClientResult

__all__ = ["UNCLIPPED_KEY", "DPAggregator", "private_keys"]

#: The payload key the client half (:class:`~lightning_fedmut.privacy.DifferentialPrivacy`) fills: 1.0 when the
#: client's update was within the clipping norm, else 0.0 (adaptive clipping counts them, with noise).
UNCLIPPED_KEY = "dp/unclipped"


def private_keys(module: Module) -> list[str]:
    """The entries a differentially private round releases: the module's trainable floating parameters, in
    ``state_dict`` order.

    Examples:
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> _ = bn.bias.requires_grad_(False)
        >>> private_keys(bn)
        ['weight']
    """
    frozen = frozen_keys(module)
    parameters = {name for name, p in module.named_parameters() if p.is_floating_point()}
    return [k for k in module.state_dict() if k in parameters and k not in frozen]


class DPAggregator(Aggregator):
    r"""Noise the sum of the clients' clipped updates once, divide it by the expected number of clients, and hand the
    noised mean update to an inner aggregator.

    Each client's update ``u_i = w_i - s_i`` (its trained model minus its start model) arrives clipped to L2 norm
    ``C`` by the client half, :class:`~lightning_fedmut.privacy.DifferentialPrivacy` (``w_i`` is then
    ``s_i + u_i``). With ``w`` the global model and ``m`` the clients that trained, the round releases

    ``w + (sum_i (w_i - w) + N(0, (z_u C)^2 I)) / E``,

    where ``E`` is the expected number of clients (``q N`` under Poisson sampling, ``K`` under fixed-size sampling)
    and ``z_u`` the noise multiplier of the updates (``z`` itself with a fixed ``C``). The sum
    ``sum_i (w_i - w) = sum_i (s_i - w) + sum_i u_i``: the first term is a function of released models only
    (FedMut's mutation offsets; zero when every client starts from the global model), the second the clipped
    updates, so replacing one client's data moves the release by at most ``2 C / E`` (adding or removing one: ``C /
    E``). The inner aggregator receives that release as the state of a single client and does with it what it does
    with a mean: :class:`~lightning_fedmut.aggregators.FedAvg` (``weighted=False``) returns it, a server optimizer
    (:class:`~lightning_fedmut.aggregators.FedAdam` ...) steps along ``release - w``.

    The released entries are the module's trainable parameters (:func:`private_keys`): they are what is clipped and
    noised. Every other entry keeps the global model's value: frozen parameters, integer state
    (``num_batches_tracked``: the clients' would reveal their step counts) and floating buffers, with a warning at
    setup. BatchNorm's running statistics are the clients' data too, and noise on them turns a running variance
    negative (the global model then evaluates to NaN); Opacus refuses BatchNorm for the same reason. A private model
    uses GroupNorm or LayerNorm, or BatchNorm with ``track_running_stats=False``.

    **Adaptive clipping** (Andrew et al., NeurIPS 2021), with ``target_quantile`` set: each client also reports
    whether its update's norm was at most ``C``; the sum of these bits gets noise ``N(0, count_stddev^2)`` and, over
    ``E``, is the noised fraction ``b``; the next round's ``C`` is ``C exp(-clip_learning_rate (b - target_quantile))``.
    The two releases together are the Gaussian mechanism with noise multiplier ``z`` when
    ``z_u = (z^-2 - (2 count_stddev)^-2)^(-1/2)``, so the accountant keeps ``z``.

    The noise is drawn from a generator this aggregator owns (declared server state: checkpointed, so a resumed run
    draws the same noise), on the CPU, update noise first, then the count's. With workers every process runs the
    aggregator on the same results in the same order from the same generator state: the noise is drawn once, the
    same in every process.

    Args:
        inner: the aggregator that receives the noised mean: ``FedAvg(weighted=False)`` (default) or a server
            optimizer with ``weighted=False``. A weighted mean would use the clients' example counts, which are
            private; FedNova's step counts and FedExP's client norms likewise.
        noise_multiplier: ``z > 0``; ``None`` leaves it to :class:`~lightning_fedmut.privacy.DifferentialPrivacy`
            to derive from a target epsilon.
        clip_norm: ``C > 0``, the (initial, with adaptive clipping) clipping norm.
        target_quantile: with a value in ``[0, 1]``, adaptive clipping towards that quantile of the update norms.
        clip_learning_rate: adaptive clipping's learning rate ``eta_C > 0`` (Andrew et al. use 0.2).
        count_stddev: the noise of the clipped count; ``None``: ``E / 20`` (Andrew et al.'s choice).
        seed: seed of the noise generator; ``None``: derived from the loop's seed by the client half.

    Examples:
        >>> agg = DPAggregator(noise_multiplier=1.0, clip_norm=0.5)
        >>> agg.clip_norm, agg.hparams["inner"]["class_path"]
        (0.5, 'lightning_fedmut.aggregators.fedavg.FedAvg')
        >>> DPAggregator(noise_multiplier=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `noise_multiplier` in (0.0, inf), got 0.0.
        >>> DPAggregator(inner=FedAvg(weighted=True))
        Traceback (most recent call last):
        ...
        ValueError: Expected `inner` to be an unweighted aggregator (FedAvg(weighted=False) or a server optimizer with weighted=False), got FedAvg with weighted=True: the clients' example counts are private.
    """

    def __init__(self, inner: Aggregator | None = None, noise_multiplier: float | None = 1.0, clip_norm: float = 1.0,
                 target_quantile: float | None = None, clip_learning_rate: float = 0.2,
                 count_stddev: float | None = None, seed: int | None = None) -> None:
        inner = FedAvg(weighted=False) if inner is None else inner
        if not (type(inner) is FedAvg or isinstance(inner, ServerOptimizer)):
            raise TypeError(f"Expected `inner` to be FedAvg(weighted=False) or a server optimizer (FedAvgM, FedAdam"
                            f" ...), got {type(inner).__name__}: it must take the noised mean as one client's model.")
        if inner.weighted:
            raise ValueError(f"Expected `inner` to be an unweighted aggregator (FedAvg(weighted=False) or a server"
                             f" optimizer with weighted=False), got {type(inner).__name__} with weighted=True: the"
                             " clients' example counts are private.")
        self.inner = inner
        self.noise_multiplier = None if noise_multiplier is None else check_real(
            "noise_multiplier", noise_multiplier, low=0.0, high=math.inf, low_open=True, high_open=True)
        self.clip_norm_init = check_real("clip_norm", clip_norm, low=0.0, high=math.inf, low_open=True, high_open=True)
        self.target_quantile = None if target_quantile is None else check_real(
            "target_quantile", target_quantile, low=0.0, high=1.0)
        self.clip_learning_rate = check_real("clip_learning_rate", clip_learning_rate, low=0.0, high=math.inf,
                                             low_open=True, high_open=True)
        self.count_stddev = None if count_stddev is None else check_real(
            "count_stddev", count_stddev, low=0.0, high=math.inf, low_open=True, high_open=True)
        self.seed = None if seed is None else check_int("seed", seed, low=0)
        #: ``z`` as the run uses it: ``noise_multiplier``, or the one derived from a target epsilon at setup
        self.effective_noise_multiplier = self.noise_multiplier
        self.expected_clients: float | None = None  # set by the client half's setup, from the sampler
        self._keys: list[str] = []
        self._kept: list[str] = []
        self.generator: torch.Generator
        self._clip_norm: float
        self._sums: list[Tensor]
        self._count: int
        self._unclipped: float
        self._figures: dict[str, float]
        self.add_state("generator", torch.Generator())
        self.add_state("_clip_norm", self.clip_norm_init)
        self.add_state("_sums", [], scope="round")
        self.add_state("_count", 0, scope="round")
        self.add_state("_unclipped", 0.0, scope="round")
        self.add_state("_figures", {}, scope="round")

    # ----------------------------------------------------------------- properties
    @property
    def clip_norm(self) -> float:
        """The clipping norm of the round in progress (adaptive clipping changes it after each round)."""
        return self._clip_norm

    @property
    def adaptive(self) -> bool:
        """Whether the clipping norm tracks a quantile of the update norms."""
        return self.target_quantile is not None

    @property
    def hparams(self) -> dict[str, Any]:
        return {"inner": {"class_path": f"{type(self.inner).__module__}.{type(self.inner).__qualname__}", "init_args": getattr(self.inner, "hparams", {})},
                "noise_multiplier": self.noise_multiplier, "clip_norm": self.clip_norm_init,
                "target_quantile": self.target_quantile, "clip_learning_rate": self.clip_learning_rate,
                "count_stddev": self.count_stddev, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.inner.load_state_dict(state_dict.pop("inner"))
        super().load_state_dict(state_dict)

    def count_noise(self) -> float:
        """The standard deviation of the clipped count's noise (adaptive clipping)."""
        expected = self._expected()
        return self.count_stddev if self.count_stddev is not None else expected / 20

    def update_noise_multiplier(self) -> float:
        """``z_u``: the updates' noise multiplier (``z`` itself without adaptive clipping)."""
        if self.effective_noise_multiplier is None:
            raise RuntimeError("DPAggregator has no noise multiplier: pass `noise_multiplier`, or a `target_epsilon`"
                               " to DifferentialPrivacy, which derives it.")
        if not self.adaptive:
            return self.effective_noise_multiplier
        return update_noise_multiplier(self.effective_noise_multiplier, self.count_noise())

    def metrics(self) -> dict[str, float]:
        """The round's ``dp/clip_norm``, ``dp/noise_std`` (of the mean update) and, with adaptive clipping, the
        noised ``dp/unclipped_fraction``."""
        return dict(self._figures)

    # ------------------------------------------------------------- aggregator verbs
    def seed_generator(self, seed: int) -> None:
        """Seed the noise generator (with ``seed`` unless the aggregator was given its own)."""
        self.generator.manual_seed(self.seed if self.seed is not None else seed)

    def setup(self, module: Module) -> None:
        self.inner.setup(module)
        self._keys = private_keys(module)
        private = set(self._keys)
        frozen = frozen_keys(module)
        self._kept = [k for k in module.state_dict() if k not in private and k not in frozen]
        self._clip_norm = self.clip_norm_init
        buffers = [k for k, v in module.state_dict().items() if k not in private and k not in frozen and is_floating(v)]
        if buffers:
            warn_user(f"DPAggregator releases the module's trainable parameters only: its floating buffers"
                      f" {buffers[:4]}{'...' if len(buffers) > 4 else ''} keep their global values (noise would turn"
                      " a BatchNorm running variance negative). Use GroupNorm or LayerNorm, or BatchNorm with"
                      " `track_running_stats=False`, in a differentially private model.", UserWarning)

    def reset(self) -> None:
        self.reset_state("round")

    @torch.no_grad()
    def update(self, result: ClientResult) -> None:
        payload = result.payload
        if UNCLIPPED_KEY not in payload:
            raise RuntimeError(
                f"DPAggregator received client {result.task.client.id!r}'s result without a clipped update: add the"
                " client half, `DifferentialPrivacy()`, to the loop's callbacks (the DPFedAvg and DPFedMut presets"
                " hold it). Noise on unclipped updates protects nothing.")
        unclipped = float(payload.pop(UNCLIPPED_KEY))
        state = result.state
        assert state is not None, "only clients that trained are aggregated"
        if not self._sums:
            self._sums = [torch.zeros_like(state[k], dtype=torch.promote_types(state[k].dtype, torch.float32))
                          for k in self._keys]
        torch._foreach_add_(self._sums, [state[k].to(s.dtype) for k, s in zip(self._keys, self._sums)])
        self._count += 1
        self._unclipped += unclipped

    @torch.no_grad()
    def compute(self, global_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        expected = self._expected()
        z_u = self.update_noise_multiplier()
        current = [global_state[k] for k in self._keys]
        if not self._sums:  # nobody trained: the release is the noise alone
            self._sums = [torch.zeros_like(t, dtype=torch.promote_types(t.dtype, torch.float32)) for t in current]
        delta = self._sums
        torch._foreach_sub_(delta, [t.to(d.dtype) for t, d in zip(current, delta)], alpha=float(self._count))
        std = z_u * self._clip_norm
        add_gaussian_noise_(delta, std, self.generator)
        torch._foreach_div_(delta, expected)
        torch._foreach_add_(delta, [t.to(d.dtype) for t, d in zip(current, delta)])
        released = {k: d.to(global_state[k].dtype) for k, d in zip(self._keys, delta)}
        released.update({k: global_state[k] for k in self._kept})
        self._figures = {"dp/clip_norm": self._clip_norm, "dp/noise_std": std / expected}
        if self.adaptive:
            assert self.target_quantile is not None
            noise = torch.randn((), generator=self.generator, dtype=torch.float64).item()
            fraction = (self._unclipped + self.count_noise() * noise) / expected
            self._figures["dp/unclipped_fraction"] = fraction
            self._clip_norm = adaptive_clip_norm(self._clip_norm, fraction, self.target_quantile,
                                                 self.clip_learning_rate)
        self.inner.reset()
        self.inner.update(SimpleNamespace(state=released, num_examples=1, num_steps=None, payload={}))  # type: ignore[arg-type]
        out = self.inner.compute(global_state)
        self._figures.update(self.inner.metrics() or {})
        return out

    def _expected(self) -> float:
        if self.expected_clients is None:
            raise RuntimeError("DPAggregator does not know the expected number of clients: add the client half,"
                               " `DifferentialPrivacy()`, to the loop's callbacks; it reads it from the sampler.")
        return self.expected_clients
