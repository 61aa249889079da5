"""Deprecated: ``ServerReport``, whose one effect (the average of FedExP's last two iterates) is now FedExP's own."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from lightning_fedmut.callbacks.base import FederatedCallback

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.aggregators.base import Aggregator
    from lightning_fedmut.loop import FederatedLoop


class ServerReport(FederatedCallback):
    r"""Deprecated alias, removed in the next release: use FedExP's own report.

    - ``ServerReport(average_last_two=True)`` is :class:`~lightning_fedmut.aggregators.fedexp.FedExPReport`
      (evaluate the average of the last two global models' *parameters*, as FedExP's authors report it; BatchNorm's
      running statistics and other buffers are the last iterate's, not averaged), which
      ``lightning_fedmut.algorithms.FedExP(average_last_two=True)`` includes: same hooks, same numbers, same
      checkpoint state.
    - ``ServerReport()`` does nothing: the server-side plugins' figures (FedExP's ``fedexp/server_lr``, the
      FedOpt aggregators' norms, :class:`~lightning_fedmut.sampling.ClusteredSampler`'s
      ``clustered_sampling/clusters``) are copied into the round's metrics by the loop itself, with or without it.

    Args:
        average_last_two: evaluate the average of the last two global models.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     report = ServerReport(average_last_two=True)
        >>> caught[0].category.__name__, report.hparams
        ('DeprecationWarning', {'average_last_two': True})
    """

    def __init__(self, average_last_two: bool = False) -> None:
        if not isinstance(average_last_two, bool):
            raise TypeError(f"Expected `average_last_two` to be a bool, got {average_last_two!r}.")
        instead = ("lightning_fedmut.algorithms.FedExP(average_last_two=True), or the callback"
                   " lightning_fedmut.aggregators.fedexp.FedExPReport()" if average_last_two else
                   "nothing: the loop reports the aggregator's and the sampler's figures itself")
        warnings.warn(f"ServerReport is deprecated and will be removed in the next release; use {instead}.",
                      DeprecationWarning, stacklevel=2)
        self.average_last_two = average_last_two
        from lightning_fedmut.aggregators.fedexp import FedExPReport  # FedExP's module imports the callbacks'

        self._report: FederatedCallback | None = FedExPReport() if average_last_two else None

    @property
    def hparams(self) -> dict[str, Any]:
        return {"average_last_two": self.average_last_two}

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        if self._report is not None:
            self._report.setup(loop, module, stage)

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        if self._report is not None:
            self._report.teardown(loop, module, stage)

    def on_before_aggregate(self, loop: FederatedLoop, module: LightningModule, aggregator: Aggregator) -> None:
        if self._report is not None:
            self._report.on_before_aggregate(loop, module, aggregator)

    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._report is not None:
            self._report.on_after_aggregate(loop, module)

    def on_validation_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._report is not None:
            self._report.on_validation_start(loop, module)

    def on_validation_end(self, loop: FederatedLoop, module: LightningModule) -> None:
        if self._report is not None:
            self._report.on_validation_end(loop, module)

    def on_exception(self, loop: FederatedLoop, module: LightningModule, exception: BaseException) -> None:
        if self._report is not None:
            self._report.on_exception(loop, module, exception)

    def metrics(self) -> dict[str, float]:
        return {} if self._report is None else self._report.metrics()

    def state_dict(self) -> dict[str, Any]:
        return {} if self._report is None else self._report.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._report is not None:
            self._report.load_state_dict(state_dict)
