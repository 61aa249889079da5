"""FedGen (Zhu, Hong and Zhou, ICML 2021): data-free knowledge distillation through a server-trained generator of
latent features, as the FedMut reference code runs it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule
from torch import Tensor, nn
from torch.func import functional_call

from lightning_fedmut.callbacks.base import LocalCallback
from lightning_fedmut.functional.distillation import (
    diversity_loss,
    label_counts,
    label_weights,
    latent_kl_gradient,
    teacher_loss,
)
from lightning_fedmut.functional.state import copy_
from lightning_fedmut.models.generator import ConditionalGenerator
from lightning_fedmut.utilities.seed import FEDGEN_STREAM, derive_seed
from lightning_fedmut.utilities.validation import check_int, check_real

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

    from lightning_fedmut.data.client import Client
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult, ClientTask

__all__ = ["FedGen", "GeneratorRegularizer", "batch_labels", "find_head"]

#: Key of a client's label counts (a list of ints, one per class) in its client state.
CLIENT_LABEL_COUNTS_KEY = "fedgen/label_counts"
#: A label is learnt by the generator when some client of the round has more examples of it (the reference's value).
MIN_SAMPLES_PER_LABEL = 1

HeadSpec = str | Callable[[nn.Module], nn.Module] | None
LabelsFn = Callable[[Any], Tensor]


def batch_labels(batch: Any) -> Tensor:
    """The labels of a training batch: its second item (``(inputs, labels, ...)``), or a dict's ``label``,
    ``labels``, ``y``, ``target`` or ``targets`` entry.

    Examples:
        >>> batch_labels((torch.zeros(2, 3), torch.tensor([1, 0]))).tolist()
        [1, 0]
        >>> batch_labels({"image": torch.zeros(1), "label": torch.tensor([2])}).tolist()
        [2]
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        for key in ("label", "labels", "y", "target", "targets"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise ValueError(f"FedGen needs each training batch's labels: expected a batch (inputs, labels, ...) or a dict"
                     f" with a 'label', 'labels', 'y', 'target' or 'targets' tensor, got {type(batch).__name__}."
                     " Pass `labels=`, a function of a batch that returns its labels.")


def find_head(module: nn.Module, head: HeadSpec = None) -> tuple[str, nn.Module]:
    """The classifier head of ``module`` and its name: the split between feature extractor and head.

    ``head`` is a submodule's path (``"head"``, ``"net.7"``), a function of the module that returns the head
    submodule, or ``None``: the module's last ``nn.Linear`` (the classifier layer of the built-in models). The
    generator produces the head's input; the head must be called on it alone, as the module's last step.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> find_head(net)[0], find_head(net, "0")[0], find_head(net, lambda m: m[2])[0]
        ('2', '0', '2')
        >>> find_head(net, "fc")
        Traceback (most recent call last):
        ...
        ValueError: Expected `head` to name a submodule of Sequential, got 'fc'; its submodules: 0, 1, 2.
    """
    named = dict(module.named_modules())
    if head is None:
        linear = [name for name, sub in named.items() if isinstance(sub, nn.Linear) and name]
        if not linear:
            raise ValueError(f"Expected {type(module).__name__} to have an nn.Linear classifier layer for `head=None`,"
                             " got none: pass `head`, the path of the classifier head (e.g. 'head') or a function"
                             " of the module that returns it.")
        return linear[-1], named[linear[-1]]
    if isinstance(head, str):
        if head in named and head:
            return head, named[head]
        children = ", ".join(name for name, _ in module.named_children()) or "none"
        raise ValueError(f"Expected `head` to name a submodule of {type(module).__name__}, got {head!r}; its"
                         f" submodules: {children}.")
    if not callable(head):
        raise TypeError(f"Expected `head` to be a submodule path, a function of the module or None, got"
                        f" {type(head).__name__}.")
    found = head(module)
    name = next((n for n, sub in named.items() if sub is found and n), None)
    if name is None:
        raise ValueError(f"Expected `head` to return a submodule of {type(module).__name__} (not the module itself),"
                         f" got {type(found).__name__}.")
    return name, found


def head_sizes(head: nn.Module) -> tuple[int, int]:
    """``(latent size, number of classes)``: the first ``nn.Linear``'s input size, the last one's output size."""
    linear = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"Expected the head ({type(head).__name__}) to contain an nn.Linear, whose input size is the"
                         " latent size, got none: pass `head`, the path of the classifier layer.")
    return linear[0].in_features, linear[-1].out_features


class _AddGradient(torch.autograd.Function):
    """The identity, whose backward adds ``owner.factor * extra`` to the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, extra: Tensor, owner: GeneratorRegularizer) -> Tensor:
        ctx.extra, ctx.owner = extra, owner
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad + (ctx.extra * ctx.owner.factor).to(grad.dtype), None, None


class GeneratorRegularizer(Callback):
    r"""A Lightning callback for one FedGen client: adds FedGen's two terms to the module's own loss.

    For each training batch ``(x, y)`` the client minimises, as the FedMut reference code does,

    .. math::

        \mathrm{loss}(x, y) + \alpha\, \mathrm{CE}\big(h(G(z', y')), y'\big)
        + \beta\, \mathrm{KL}\big(\mathrm{softmax}(h(G(z, y)))\ \|\ \mathrm{softmax}(f(x))\big)

    where ``h`` is the head, ``f(x)`` the head's output on the batch (the logits), ``y'`` ``batch_size`` labels
    drawn uniformly from all classes, ``z, z'`` uniform noise in ``[0, 1)`` and ``G`` the (frozen, eval-mode)
    generator. The KL target is constant. The KL term enters through the head's output (its gradient
    :func:`~lightning_fedmut.functional.distillation.latent_kl_gradient` is added there in the backward pass, so
    the model is differentiated once); the cross-entropy on generated features reaches the head only and is
    backpropagated in ``on_before_backward``, scaled as Lightning scaled the loss (``accumulate_grad_batches``,
    the mixed-precision loss scale). Draws per step, from this callback's generator seeded with ``seed``: the
    noise ``z`` for the batch, then ``y'``, then ``z'``.

    Args:
        generator: the conditional generator (used in eval mode, never trained here).
        head: the path of the head in the module.
        alpha: weight of the cross-entropy on generated features.
        beta: weight of the KL term.
        batch_size: number of generated features per step for the cross-entropy term.
        seed: seed of the noise and label draws.
        labels: a function of a batch that returns its labels.
    """

    def __init__(self, generator: ConditionalGenerator, head: str, alpha: float, beta: float, batch_size: int,
                 seed: int, labels: LabelsFn = batch_labels) -> None:
        self.generator, self.head = generator, head
        self.alpha, self.beta, self.batch_size = alpha, beta, batch_size
        self.labels = labels
        self.rng = torch.Generator().manual_seed(seed)
        self.factor = 1.0
        self._head: nn.Module | None = None
        self._handle: Any = None
        self._labels: Tensor | None = None
        self._wrapped = False
        self._busy = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.release()
        self._head = pl_module.get_submodule(self.head)
        self.generator.to(pl_module.device).eval()
        self._handle = self._head.register_forward_hook(self._wrap)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._labels, self._wrapped, self.factor = self.labels(batch), False, 1.0

    def _noise(self, n: int, device: torch.device) -> Tensor:
        return torch.rand(n, self.generator.noise_dim, generator=self.rng).to(device)

    def _wrap(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if self._busy or self._labels is None or not (module.training and torch.is_grad_enabled()):
            return None
        if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != self._labels.shape[0]:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"Expected the head `{self.head}` to return logits of shape (batch, classes) for the"
                             f" batch's {self._labels.shape[0]} labels, got {shape}.")
        y = self._labels.to(output.device).long()
        with torch.no_grad():
            self._busy = True
            try:
                target = torch.softmax(module(self.generator(y, self._noise(len(y), output.device))).float(), dim=1)
            finally:
                self._busy = False
        self._wrapped = True
        return _AddGradient.apply(output, latent_kl_gradient(output, target, self.beta), self)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        if self._labels is None:
            return
        if not self._wrapped or self._head is None:
            raise RuntimeError(f"FedGen's regulariser saw no training call of the head `{self.head}` before the"
                               " backward pass: the head must map the batch's features to its logits in training_step.")
        factor = 1.0 / trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1.0
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            factor *= float(scaler.get_scale())
        self.factor = factor
        device = loss.device
        sampled = torch.randint(self.generator.num_classes, (self.batch_size,), generator=self.rng).to(device)
        noise = self._noise(self.batch_size, device)
        with torch.no_grad():
            features = self.generator(sampled, noise)
        self._busy = True
        try:
            term = self.alpha * F.cross_entropy(self._head(features).float(), sampled)
        finally:
            self._busy = False
        (term * factor).backward()
        self._labels = None

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.release()

    def release(self) -> None:
        """Remove the hook on the head (also after a failed training)."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._head, self._labels = None, None, None


class FedGen(LocalCallback):
    r"""FedGen: a server-trained generator of latent features regularises every client's training.

    **Server**, after every round's aggregation: a conditional generator ``G(z, y)`` of the head's input features
    (:class:`~lightning_fedmut.models.generator.ConditionalGenerator`) takes ``generator_steps`` Adam steps on
    ``teacher_weight * teacher + diversity_weight * diversity``: the cross-entropy of each trained client's head on
    generated features, weighted by the client's share of each label among the round's clients
    (:func:`~lightning_fedmut.functional.distillation.teacher_loss`), and the diversity term
    (:func:`~lightning_fedmut.functional.distillation.diversity_loss`); ``batch_size`` labels per step, drawn
    uniformly from the labels some client has at least two examples of. **Clients**, from the first round after
    the generator was trained (so not in round 0): their loss plus ``alpha * CE(head(G(z', y')), y')`` and
    ``beta * KL(softmax(head(G(z, y))) || softmax(logits))`` (:class:`GeneratorRegularizer`).

    The defaults are the FedMut reference code's (``Algorithm/Training_FedGen.py`` and ``utils/model_config.py``,
    CIFAR-10): ``alpha = beta = 0.2`` (its ``generative_alpha``/``generative_beta``), teacher and diversity weights 1
    (``ensemble_alpha``, ``ensemble_eta``; its student term has weight ``ensemble_beta = 0``, off), Adam with lr
    3e-4 and weight decay 1e-2 created afresh every round (``reset_optimizer=True``), 50 steps a round (50 epochs //
    5 teacher iterations, times 5), batch 128 (its ``args.bs``), noise of 100 uniform draws, hidden width 512.

    The split: ``head`` names the classifier head (see :func:`find_head`); its first ``nn.Linear``'s input size is
    the latent size, its last one's output size the number of classes. Each client's label counts are computed once,
    where it trains, the first time it is sampled (one pass over its training data; ``labels`` reads a batch's
    labels), kept in its client state (``fedgen/label_counts``, checkpointed with the client-state store) and
    sent with its head to the server through declared round state. With workers, every process trains the same
    generator from the same heads and counts, in slot order, with the same generator state: nothing is sent.

    Server state, in the federated checkpoints: the generator's weights and BatchNorm statistics, the generator
    optimizer's state (empty while ``reset_optimizer``), the random generator ``rng`` of the server's draws, and the
    number of rounds the generator was trained. Each round it logs ``fedgen/teacher_loss`` and
    ``fedgen/diversity_loss`` (means over the round's generator steps, weighted as in the loss).

    Args:
        alpha: client weight of the cross-entropy on generated features.
        beta: client weight of the KL term.
        head: the classifier head: a submodule path, a function of the module, or ``None`` (its last ``nn.Linear``).
        labels: a function of a training batch that returns its labels; ``None``: :func:`batch_labels`.
        batch_size: generated features per generator step and per client step.
        generator_steps: the generator's Adam steps per round.
        generator_lr: the generator's learning rate.
        generator_weight_decay: Adam's weight decay.
        teacher_weight: weight of the teacher loss.
        diversity_weight: weight of the diversity loss.
        hidden_dim: the generator's hidden width.
        noise_dim: the size of the generator's noise.
        reset_optimizer: a new Adam every round (the FedMut code); ``False`` keeps its moments (FedGen's code).
        seed: seed of the server's draws and the generator's initial weights; ``None``: derived from the loop's.

    Examples:
        >>> from lightning_fedmut.models import DigitsCNN
        >>> fedgen = FedGen(head="net.9")
        >>> find_head(DigitsCNN(), fedgen.head)[0], fedgen.hparams["alpha"], fedgen.hparams["generator_steps"]
        ('net.9', 0.2, 50)
    """

    def __init__(self, alpha: float = 0.2, beta: float = 0.2, head: HeadSpec = None, labels: LabelsFn | None = None,
                 batch_size: int = 128, generator_steps: int = 50, generator_lr: float = 3e-4,
                 generator_weight_decay: float = 1e-2, teacher_weight: float = 1.0, diversity_weight: float = 1.0,
                 hidden_dim: int = 512, noise_dim: int = 100, reset_optimizer: bool = True,
                 seed: int | None = None) -> None:
        self.alpha = check_real("alpha", alpha, low=0.0)
        self.beta = check_real("beta", beta, low=0.0)
        if head is not None and not isinstance(head, str) and not callable(head):
            raise TypeError(f"Expected `head` to be a submodule path, a function of the module or None, got"
                            f" {type(head).__name__}.")
        if labels is not None and not callable(labels):
            raise TypeError(f"Expected `labels` to be a function of a batch or None, got {type(labels).__name__}.")
        self._head_spec, self._labels_fn = head, labels or batch_labels
        self.head = head if head is None or isinstance(head, str) else _qualname(head)  # a run config's value
        self.labels = None if labels is None else _qualname(labels)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.generator_steps = check_int("generator_steps", generator_steps, low=0)
        self.generator_lr = check_real("generator_lr", generator_lr, low=0.0, low_open=True)
        self.generator_weight_decay = check_real("generator_weight_decay", generator_weight_decay, low=0.0)
        self.teacher_weight = check_real("teacher_weight", teacher_weight, low=0.0)
        self.diversity_weight = check_real("diversity_weight", diversity_weight, low=0.0)
        self.hidden_dim = check_int("hidden_dim", hidden_dim, low=1)
        self.noise_dim = check_int("noise_dim", noise_dim, low=1)
        if not isinstance(reset_optimizer, bool):
            raise TypeError(f"Expected `reset_optimizer` to be a bool, got {reset_optimizer!r}.")
        self.reset_optimizer = reset_optimizer
        self.seed = None if seed is None else check_int("seed", seed, low=0)
        self._head_name = ""
        self._generator: ConditionalGenerator | None = None
        self._client_generator: ConditionalGenerator | None = None
        self.rng: torch.Generator
        self._generator_state: dict[str, Tensor]
        self._optimizer_state: dict[str, Any]
        self._generator_rounds: int
        self._heads: dict[int, dict[str, Tensor]]
        self._counts: dict[int, list[int]]
        self._regularizers: dict[int, GeneratorRegularizer]
        self._figures: dict[str, float]
        self.add_state("rng", torch.Generator())
        self.add_state("_generator_state", {})
        self.add_state("_optimizer_state", {})
        self.add_state("_generator_rounds", 0)
        # by slot: this process's clients' heads and label counts, then (reduced by the loop) the round's
        self.add_state("_heads", {}, reduce="cat", scope="round")
        self.add_state("_counts", {}, reduce="cat", scope="round")
        self.add_state("_regularizers", {}, scope="round")
        self.add_state("_figures", {}, scope="round")

    @property
    def generator(self) -> ConditionalGenerator:
        """The server's generator (built in ``setup``, from the module's head)."""
        if self._generator is None:
            raise RuntimeError("FedGen's generator is built when the loop's fit starts (setup).")
        return self._generator

    def setup(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        self._head_name, head = find_head(module, self._head_spec)
        latent_dim, num_classes = head_sizes(head)
        seed = self.seed if self.seed is not None else derive_seed(loop.seed, FEDGEN_STREAM)
        self.rng.manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # the initial weights from the seed, the global generator untouched
            torch.manual_seed(derive_seed(seed, 1))
            self._generator = ConditionalGenerator(num_classes, latent_dim, self.hidden_dim, self.noise_dim)
        self._client_generator = ConditionalGenerator(num_classes, latent_dim, self.hidden_dim, self.noise_dim)
        self._client_generator.requires_grad_(False).eval()
        self._generator_state = self._generator.state_dict()  # its live tensors: a restore loads into them
        self._optimizer_state, self._generator_rounds = {}, 0

    def teardown(self, loop: FederatedLoop, module: LightningModule, stage: str) -> None:
        for regularizer in self._regularizers.values():
            regularizer.release()
        self._regularizers = {}

    def on_round_start(self, loop: FederatedLoop, module: LightningModule) -> None:
        assert self._client_generator is not None  # built in setup
        clients = list(self._client_generator.state_dict().values())
        copy_(clients, [t.to(c.device) for c, t in zip(clients, self.generator.state_dict().values())])

    def on_client_fit_start(self, loop: FederatedLoop, module: LightningModule, task: ClientTask) -> None:
        if self._generator_rounds == 0:  # the reference's `regularization = round != 0`
            return
        assert self._client_generator is not None  # built in setup
        regularizer = GeneratorRegularizer(self._client_generator, self._head_name, self.alpha, self.beta,
                                           self.batch_size, derive_seed(task.seed, FEDGEN_STREAM), self._labels_fn)
        self._regularizers[task.slot] = regularizer
        task.callbacks.append(regularizer)

    def on_client_fit_end(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        self._regularizers.pop(result.task.slot, None)
        assert result.state is not None and result.client_state is not None  # the client trained
        counts = result.client_state.get(CLIENT_LABEL_COUNTS_KEY)
        if counts is None:
            counts = self._count_labels(result.task.client)
            result.client_state[CLIENT_LABEL_COUNTS_KEY] = counts
        prefix = self._head_name + "."
        self._heads[result.task.slot] = {k[len(prefix):]: v.detach().cpu().clone() for k, v in result.state.items()
                                         if k.startswith(prefix)}
        self._counts[result.task.slot] = list(counts)

    def on_client_fit_failure(self, loop: FederatedLoop, module: LightningModule, result: ClientResult) -> None:
        regularizer = self._regularizers.pop(result.task.slot, None)
        if regularizer is not None:
            regularizer.release()

    def on_after_aggregate(self, loop: FederatedLoop, module: LightningModule) -> None:
        slots = sorted(self._heads)  # every worker's clients, in slot order
        if slots:
            self._train_generator(module, [self._heads[s] for s in slots],
                                  torch.tensor([self._counts[s] for s in slots]))

    def _train_generator(self, module: LightningModule, heads: list[dict[str, Tensor]], counts: Tensor) -> None:
        """``generator_steps`` Adam steps of the generator on the round's heads, on the CPU."""
        weights, learnt = label_weights(counts, MIN_SAMPLES_PER_LABEL)
        generator, head = self.generator, module.get_submodule(self._head_name)
        optimizer = torch.optim.Adam(generator.parameters(), lr=self.generator_lr,
                                     weight_decay=self.generator_weight_decay)
        if not self.reset_optimizer and self._optimizer_state:
            optimizer.load_state_dict(self._optimizer_state)
        totals = torch.zeros(2, dtype=torch.float64)
        was_training, learnt_labels = head.training, torch.tensor(learnt, dtype=torch.long)
        generator.train()
        head.eval()
        try:
            for _ in range(self.generator_steps if learnt else 0):
                y = learnt_labels[torch.randint(len(learnt), (self.batch_size,), generator=self.rng)]
                noise = torch.rand(self.batch_size, self.noise_dim, generator=self.rng)
                features = generator(y, noise)
                teacher = teacher_loss([functional_call(head, state, (features,)) for state in heads], y, weights)
                diversity = diversity_loss(noise, features)
                loss = self.teacher_weight * teacher + self.diversity_weight * diversity
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                totals += torch.tensor([self.teacher_weight * teacher.item(), self.diversity_weight * diversity.item()],
                                       dtype=torch.float64)
        finally:
            head.train(was_training)
        self._optimizer_state = {} if self.reset_optimizer else optimizer.state_dict()
        self._generator_rounds += 1
        steps = self.generator_steps if learnt else 0
        if steps:
            self._figures = {"fedgen/teacher_loss": float(totals[0]) / steps,
                             "fedgen/diversity_loss": float(totals[1]) / steps}

    def _count_labels(self, client: Client) -> list[int]:
        """The client's label counts: one pass over its training data."""
        assert self._client_generator is not None  # built in setup
        data = client.data
        loader = data.train_dataloader() if isinstance(data, LightningDataModule) else data
        total = [0] * self._client_generator.num_classes
        for batch in loader:
            for c, n in enumerate(label_counts(self._labels_fn(batch), len(total))):
                total[c] += n
        return total

    def metrics(self) -> dict[str, float]:
        """The round's ``fedgen/teacher_loss`` and ``fedgen/diversity_loss`` (none before the generator trains)."""
        return dict(self._figures)


def _qualname(fn: Any) -> str:
    """A function's importable name, for run configs (a repr would change from process to process)."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
