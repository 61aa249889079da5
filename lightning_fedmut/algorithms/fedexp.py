"""FedExP (Jhunjhunwala et al., ICLR 2023): an extrapolated server step sized from the clients' updates."""

from __future__ import annotations

from lightning_fedmut.aggregators.fedexp import FedExP as FedExPAggregator
from lightning_fedmut.aggregators.fedexp import FedExPReport
from lightning_fedmut.algorithms.base import FederatedAlgorithm

__all__ = ["FedExP"]


class FedExP(FederatedAlgorithm):
    r"""FedExP: the server extrapolates the mean update with a step from the POCS view.

    Components: the aggregator :class:`~lightning_fedmut.aggregators.FedExP` (``epsilon``, ``weighted``) and,
    with ``average_last_two=True``, FedExP's report :class:`~lightning_fedmut.aggregators.fedexp.FedExPReport`,
    which evaluates the average of the last two global models, as FedExP's authors report it.

    Args:
        epsilon: the step's regulariser.
        weighted: weight clients by their number of examples.
        average_last_two: evaluate the average of the last two global models.

    Examples:
        >>> algo = FedExP(average_last_two=True)
        >>> algo.hparams, [type(cb).__name__ for cb in algo.callbacks]
        ({'epsilon': 0.001, 'weighted': False, 'average_last_two': True}, ['FedExPReport'])
    """

    def __init__(self, epsilon: float = 1e-3, weighted: bool = False, average_last_two: bool = False) -> None:
        if not isinstance(average_last_two, bool):
            raise TypeError(f"Expected `average_last_two` to be a bool, got {average_last_two!r}.")
        report = [FedExPReport()] if average_last_two else []
        super().__init__(aggregator=FedExPAggregator(epsilon=epsilon, weighted=weighted), callbacks=report)
        self._save_init_args(epsilon=epsilon, weighted=weighted, average_last_two=average_last_two)
