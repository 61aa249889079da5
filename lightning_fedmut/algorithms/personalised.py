"""Methods that keep part of the model on each client: FedBN (local BatchNorm) and FedPer (a local head)."""

from __future__ import annotations

from torch import nn

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.federation import FederationPolicy

__all__ = ["FedBN", "FedPer"]

#: The layers FedBN keeps local, with their affine parameters and running statistics: every ``nn.BatchNorm1d``,
#: ``nn.BatchNorm2d``, ``nn.BatchNorm3d`` and ``nn.SyncBatchNorm`` (their common base class).
BATCH_NORM = nn.modules.batchnorm._BatchNorm


class FedBN(FederatedAlgorithm):
    r"""FedBN (Li et al., ICLR 2021): FedAvg of everything but the BatchNorm layers, which stay on each client.

    Each client keeps its BatchNorm layers' weights, biases and running statistics (in the loop's client-state
    store) and trains from its own copy; the server averages the other entries. The global model's BatchNorm
    layers keep their initial values: evaluate a client's model (the global model with the client's BatchNorm)
    on the client's data to read FedBN's accuracy.

    Args:
        weighted: weight each client by its number of examples.

    Examples:
        >>> algo = FedBN()
        >>> algo.name, algo.federation
        ('FedBN', FederationPolicy(local=['_BatchNorm'], frozen=[]))
    """

    def __init__(self, weighted: bool = True) -> None:
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted),
                         federation=FederationPolicy(local=[BATCH_NORM]))
        self._save_init_args(weighted=weighted)


class FedPer(FederatedAlgorithm):
    r"""FedPer (Arivazhagan et al., 2019): FedAvg of the body; each client keeps its own head.

    Args:
        head: the ``state_dict`` key pattern of the head (``"fc.*"``, ``"head.*"``), or a submodule name, whose
            entries every client keeps to itself.
        weighted: weight each client by its number of examples.

    Examples:
        >>> FedPer(head="classifier").federation
        FederationPolicy(local=['classifier.*'], frozen=[])
    """

    def __init__(self, head: str = "head", weighted: bool = True) -> None:
        if not isinstance(head, str) or not head.strip():
            raise ValueError(f"Expected `head` to be a submodule name or a key pattern such as 'fc.*', got {head!r}.")
        pattern = head if any(c in head for c in "*?[") else f"{head}.*"
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted),
                         federation=FederationPolicy(local=[pattern]))
        self._save_init_args(head=head, weighted=weighted)

