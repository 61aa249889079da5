"""The FedOpt family (Reddi et al., ICLR 2021; Hsu et al. 2019): a server optimizer over the mean client update."""

from __future__ import annotations

from lightning_fedmut.aggregators import fedopt as _aggregators
from lightning_fedmut.algorithms.base import FederatedAlgorithm

__all__ = ["FedAdagrad", "FedAdam", "FedAvgM", "FedYogi"]


class FedAvgM(FederatedAlgorithm):
    r"""FedAvgM: server momentum over the mean client update.

    Components: the aggregator :class:`~lightning_fedmut.aggregators.FedAvgM` with the same arguments.

    Examples:
        >>> FedAvgM(server_lr=0.5).hparams
        {'server_lr': 0.5, 'momentum': 0.9, 'weighted': False}
    """

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9, weighted: bool = False) -> None:
        super().__init__(aggregator=_aggregators.FedAvgM(server_lr=server_lr, momentum=momentum, weighted=weighted))
        self._save_init_args(server_lr=server_lr, momentum=momentum, weighted=weighted)


class FedAdagrad(FederatedAlgorithm):
    r"""FedAdagrad: Adagrad on the server over the mean client update.

    Components: the aggregator :class:`~lightning_fedmut.aggregators.FedAdagrad` with the same arguments.

    Examples:
        >>> FedAdagrad().hparams["server_lr"]
        0.1
    """

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.9, tau: float = 1e-3, bias_correction: bool | str = False,
                 initial_accumulator: float | None = None, weighted: bool = False) -> None:
        super().__init__(aggregator=_aggregators.FedAdagrad(
            server_lr=server_lr, beta1=beta1, tau=tau, bias_correction=bias_correction,
            initial_accumulator=initial_accumulator, weighted=weighted))
        self._save_init_args(server_lr=server_lr, beta1=beta1, tau=tau, bias_correction=bias_correction,
                             initial_accumulator=initial_accumulator, weighted=weighted)


class FedAdam(FederatedAlgorithm):
    r"""FedAdam: Adam on the server over the mean client update.

    Components: the aggregator :class:`~lightning_fedmut.aggregators.FedAdam` with the same arguments.

    Examples:
        >>> FedAdam(server_lr=0.03).hparams["server_lr"]
        0.03
    """

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 bias_correction: bool | str = False, initial_accumulator: float | None = None,
                 weighted: bool = False) -> None:
        super().__init__(aggregator=_aggregators.FedAdam(
            server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, bias_correction=bias_correction,
            initial_accumulator=initial_accumulator, weighted=weighted))
        self._save_init_args(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, bias_correction=bias_correction,
                             initial_accumulator=initial_accumulator, weighted=weighted)


class FedYogi(FederatedAlgorithm):
    r"""FedYogi: Yogi on the server over the mean client update.

    Components: the aggregator :class:`~lightning_fedmut.aggregators.FedYogi` with the same arguments.

    Examples:
        >>> FedYogi(server_lr=0.03).hparams["beta2"]
        0.99
    """

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 bias_correction: bool | str = False, initial_accumulator: float | None = None,
                 weighted: bool = False) -> None:
        super().__init__(aggregator=_aggregators.FedYogi(
            server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, bias_correction=bias_correction,
            initial_accumulator=initial_accumulator, weighted=weighted))
        self._save_init_args(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, bias_correction=bias_correction,
                             initial_accumulator=initial_accumulator, weighted=weighted)
