"""Methods that keep part of the model on each client: FedBN (local BatchNorm), FedPer and FedRep (a local head)."""

from __future__ import annotations

from torch import nn

from lightning_fedmut.aggregators.fedavg import FedAvg as FedAvgAggregator
from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.callbacks.fedrep import FedRepSchedule
from lightning_fedmut.federation import FederationPolicy

__all__ = ["FedBN", "FedPer", "FedRep"]

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
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted),
                         federation=FederationPolicy(local=[head_pattern(head)]))
        self._save_init_args(head=head, weighted=weighted)



class FedRep(FederatedAlgorithm):
    r"""FedRep (Collins et al., ICML 2021): each client keeps its head; it trains the head, then the shared body.

    Each round a client first trains its own head (local, kept in the client-state store) for ``head_epochs`` epochs
    with the body frozen, then the body for the loop's remaining ``local_epochs - head_epochs`` epochs with the head
    frozen; the server averages the bodies only. Freezing toggles ``requires_grad`` on the client's Trainer
    (:class:`~lightning_fedmut.callbacks.fedrep.AlternateHeadBody`), so the module's own optimizer from
    ``configure_optimizers`` trains both parts, as one optimizer does in the authors' code (``lgcollins/FedRep``,
    ``LocalUpdate.train``: ``local_ep - local_rep_ep`` head epochs, then ``local_rep_ep`` body epochs; there
    ``local_ep=10``, ``local_rep_ep=1``). Read each client's accuracy with the personalised evaluation
    (``personal/val_acc_mean``, on by default when clients have validation data).

    Args:
        head: the submodule name or ``state_dict`` key pattern of the head (``"fc"``, ``"head.*"``).
        head_epochs: the head's epochs per round, below the loop's ``local_epochs``; ``None``: all but one (the
            reference code's split). The loop must run by ``local_epochs``, not ``local_steps``.
        weighted: weight each client by its number of examples (the reference code does).

    Examples:
        >>> algo = FedRep(head="fc", head_epochs=4)
        >>> algo.federation, algo.hparams
        (FederationPolicy(local=['fc.*'], frozen=[]), {'head': 'fc', 'head_epochs': 4, 'weighted': True})
        >>> FedRep(head_epochs=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `head_epochs` to be an integer >= 1, got 0.
    """

    def __init__(self, head: str = "head", head_epochs: int | None = None, weighted: bool = True) -> None:
        pattern = head_pattern(head)
        super().__init__(aggregator=FedAvgAggregator(weighted=weighted),
                         local=[FedRepSchedule(head=pattern, head_epochs=head_epochs)],
                         federation=FederationPolicy(local=[pattern]))
        self._save_init_args(head=head, head_epochs=head_epochs, weighted=weighted)


def head_pattern(head: str) -> str:
    """The key pattern of a head given as a submodule name (``"fc"``: ``"fc.*"``) or as a pattern already.

    Examples:
        >>> head_pattern("classifier"), head_pattern("net.3.*")
        ('classifier.*', 'net.3.*')
    """
    if not isinstance(head, str) or not head.strip():
        raise ValueError(f"Expected `head` to be a submodule name or a key pattern such as 'fc.*', got {head!r}.")
    return head if any(c in head for c in "*?[") else f"{head}.*"
