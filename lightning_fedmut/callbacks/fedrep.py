"""FedRep's local schedule (Collins et al., ICML 2021): the head's epochs with the body frozen, then the body's."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from lightning.pytorch import Callback
from torch import nn

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.federation import FederationPolicy
from lightning_fedmut.utilities.validation import check_int

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientTask

__all__ = ["AlternateHeadBody", "FedRepSchedule", "head_parameter_names"]


def head_parameter_names(module: nn.Module, head: str) -> frozenset[str]:
    """The names of ``module``'s parameters that the key pattern ``head`` selects (an error when it selects none).

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
        >>> sorted(head_parameter_names(net, "2.*"))
        ['2.bias', '2.weight']
    """
    _, local, _ = FederationPolicy(local=[head]).split(module)
    names = frozenset(n for n, _ in module.named_parameters(remove_duplicate=False) if n in local)
    if not names:
        raise ValueError(f"Expected the head {head!r} to select parameters of {type(module).__name__}, got only"
                         f" buffers ({sorted(local)[:3]}).")
    return names


class AlternateHeadBody(Callback):
    r"""A Lightning callback that trains the head alone for ``head_epochs`` epochs, then the body alone.

    At the start of each epoch it sets ``requires_grad`` so that only the head's parameters (epochs
    ``0 .. head_epochs - 1``) or only the body's (the following ones) train; parameters that were frozen when training
    started stay frozen. The optimizer is the module's own, from ``configure_optimizers``: a parameter without a
    gradient is not stepped (nor decayed, nor moved by momentum), and the gradients of the part just frozen are
    dropped at the switch so that an optimizer zeroing gradients in place does not step them either. Every flag is
    put back when training ends, also when it raises.

    Args:
        head: the head's parameter names.
        head_epochs: how many epochs train the head first.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> schedule = AlternateHeadBody({"1.weight", "1.bias"}, head_epochs=1)
        >>> schedule.freeze(net, head_phase=True); [p.requires_grad for p in net.parameters()]
        [False, False, True, True]
        >>> schedule.freeze(net, head_phase=False); [p.requires_grad for p in net.parameters()]
        [True, True, False, False]
        >>> schedule.restore(); [p.requires_grad for p in net.parameters()]
        [True, True, True, True]
    """

    def __init__(self, head: Collection[str], head_epochs: int) -> None:
        self.head = frozenset(head)
        self.head_epochs = check_int("head_epochs", head_epochs, low=0)
        self._flags: dict[nn.Parameter, bool] = {}

    def freeze(self, module: nn.Module, head_phase: bool) -> None:
        """Let only the head (``head_phase``) or only the body train; remembers the flags found the first time."""
        if not self._flags:
            self._flags = {p: p.requires_grad for p in module.parameters()}
        for name, p in module.named_parameters():
            trains = self._flags.get(p, False) and ((name in self.head) == head_phase)
            if not trains:
                p.grad = None
            p.requires_grad_(trains)

    def restore(self) -> None:
        """Put back every ``requires_grad`` flag as it was when training started."""
        for p, flag in self._flags.items():
            p.requires_grad_(flag)
        self._flags = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.freeze(pl_module, head_phase=trainer.current_epoch < self.head_epochs)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.restore()


class FedRepSchedule(LocalCallback):
    r"""FedRep's local component: each client's Trainer gets an :class:`AlternateHeadBody` callback.

    Each client trains its head (its own, kept local by FedRep's federation policy) for ``head_epochs`` epochs with
    the body frozen, then the body for the loop's remaining ``local_epochs - head_epochs`` epochs with the head
    frozen, as ``lgcollins/FedRep``'s ``LocalUpdate.train`` does (its ``local_ep - local_rep_ep`` head epochs, then
    ``local_rep_ep`` body epochs, with one optimizer over the whole model).

    Args:
        head: the ``state_dict`` key pattern of the head (``"fc.*"``).
        head_epochs: the head's epochs per round; ``None``: all but one of the loop's ``local_epochs`` (the
            reference code's default split: one body epoch).

    Examples:
        >>> schedule = FedRepSchedule(head="fc.*", head_epochs=4)
        >>> schedule.head, schedule.head_epochs
        ('fc.*', 4)
    """

    def __init__(self, head: str, head_epochs: int | None = None) -> None:
        if not isinstance(head, str) or not head.strip():
            raise ValueError(f"Expected `head` to be a key pattern such as 'fc.*', got {head!r}.")
        self.head = head
        self.head_epochs = None if head_epochs is None else check_int("head_epochs", head_epochs, low=1)
        self._head: frozenset[str] = frozenset()
        self._epochs = 0

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        if loop.local_steps is not None:
            raise ValueError(f"Expected FedRep to run with `local_epochs` (it alternates head and body by epoch), got"
                             f" `local_steps`={loop.local_steps}: leave `local_steps` out and set `local_epochs`.")
        epochs = loop.local_epochs - 1 if self.head_epochs is None else self.head_epochs
        if not 1 <= epochs < loop.local_epochs:
            raise ValueError(f"Expected FedRep's `head_epochs` below the loop's `local_epochs`={loop.local_epochs} so"
                             f" that the body trains too, got head_epochs={epochs}"
                             f"{' (all but one local epoch)' if self.head_epochs is None else ''}: set"
                             f" `local_epochs` to at least {epochs + 1 if epochs else 2}.")
        self._epochs = epochs
        self._head = head_parameter_names(module, self.head)

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        task.callbacks.append(AlternateHeadBody(self._head, self._epochs))
