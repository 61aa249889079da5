"""FedSAM, FedASAM and FedAvg with server-side SWA (Caldarola et al., ECCV 2022)."""

from __future__ import annotations

from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.algorithms.fedavg import FedAvg
from lightning_fedmut.algorithms.fedsam import FedASAM, FedSAM
from lightning_fedmut.callbacks.swa import SWA

__all__ = ["FedASAMSWA", "FedAvgSWA", "FedSAMSWA"]


def _with_swa(base: FederatedAlgorithm, swa: SWA) -> dict:
    return {"aggregator": base.aggregator, "start_model": base.start_model, "local": base.local,
            "sampler": base.sampler, "callbacks": [*base.callbacks, swa], "federation": base.federation}


class FedASAMSWA(FederatedAlgorithm):
    r"""FedASAM with server-side SWA: the components of :class:`~lightning_fedmut.algorithms.FedASAM` and
    :class:`~lightning_fedmut.callbacks.SWA` (``start``, ``cycle``, ``swa_lr``, ``average_buffers``).

    The defaults are Caldarola et al.'s CIFAR scripts' (``-rho 0.5 -eta 0 ... -swa --swa-c 10``, ``--swa-lr``
    1e-4, ``start`` at 75% of the rounds) except ``eta``, which keeps FedASAM's default 0.2 (their scripts carry a
    "TODO change rho eta" there).

    Examples:
        >>> algo = FedASAMSWA(cycle=5)
        >>> [type(cb).__name__ for cb in algo.federated_callbacks], algo.hparams["cycle"]
        (['SAM', 'SWA'], 5)
    """

    def __init__(self, rho: float = 0.5, eta: float = 0.2, weighted: bool = True, start: int | None = None,
                 cycle: int = 10, swa_lr: float = 1e-4, average_buffers: bool = False) -> None:
        swa = SWA(start=start, cycle=cycle, swa_lr=swa_lr, average_buffers=average_buffers)
        super().__init__(**_with_swa(FedASAM(rho=rho, eta=eta, weighted=weighted), swa))
        self._save_init_args(rho=rho, eta=eta, weighted=weighted, start=start, cycle=cycle, swa_lr=swa_lr,
                             average_buffers=average_buffers)


class FedSAMSWA(FederatedAlgorithm):
    r"""FedSAM with server-side SWA: the components of :class:`~lightning_fedmut.algorithms.FedSAM` and
    :class:`~lightning_fedmut.callbacks.SWA`.

    Examples:
        >>> FedSAMSWA().hparams["rho"]
        0.05
    """

    def __init__(self, rho: float = 0.05, weighted: bool = True, start: int | None = None, cycle: int = 10,
                 swa_lr: float = 1e-4, average_buffers: bool = False) -> None:
        swa = SWA(start=start, cycle=cycle, swa_lr=swa_lr, average_buffers=average_buffers)
        super().__init__(**_with_swa(FedSAM(rho=rho, weighted=weighted), swa))
        self._save_init_args(rho=rho, weighted=weighted, start=start, cycle=cycle, swa_lr=swa_lr,
                             average_buffers=average_buffers)


class FedAvgSWA(FederatedAlgorithm):
    r"""FedAvg with server-side SWA (the "FedAvg + SWA" baseline of Caldarola et al.).

    Examples:
        >>> FedAvgSWA(start=3, cycle=1).hparams
        {'weighted': True, 'start': 3, 'cycle': 1, 'swa_lr': 0.0001, 'average_buffers': False}
    """

    def __init__(self, weighted: bool = True, start: int | None = None, cycle: int = 10, swa_lr: float = 1e-4,
                 average_buffers: bool = False) -> None:
        swa = SWA(start=start, cycle=cycle, swa_lr=swa_lr, average_buffers=average_buffers)
        super().__init__(**_with_swa(FedAvg(weighted=weighted), swa))
        self._save_init_args(weighted=weighted, start=start, cycle=cycle, swa_lr=swa_lr,
                             average_buffers=average_buffers)
