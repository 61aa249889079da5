"""A run's configuration as plain data: the loop's arguments and its plugins', for loggers and checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

    from lightning_fedmut.loop import FederatedLoop


def class_path(obj: Any) -> str:
    """``module.QualifiedName`` of ``obj``'s class, as jsonargparse writes it.

    Examples:
        >>> class_path(3)
        'builtins.int'
    """
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _plugin(obj: Any) -> dict[str, Any]:
    return {"class_path": class_path(obj), "init_args": getattr(obj, "hparams", {})}


def loop_hparams(loop: FederatedLoop) -> dict[str, Any]:
    """The loop's arguments, with the algorithm's (its name and settings; ``None`` when the loop was given
    components), the aggregator's, sampler's and callbacks'."""
    return {
        "rounds": loop.rounds,
        "clients_per_round": loop.clients_per_round,
        "local_epochs": loop.local_epochs,
        "local_steps": loop.local_steps,
        "evaluate_every": loop.evaluate_every,
        "seed": loop.seed,
        "min_clients_per_round": loop.min_clients_per_round,
        "on_round_failure": loop.on_round_failure,
        "client_timeout": loop.client_timeout,
        "workers": loop.executor.world_size,
        "algorithm": None if loop.algorithm is None else {"name": loop.algorithm.name, **_plugin(loop.algorithm)},
        "aggregator": _plugin(loop.aggregator),
        "sampler": _plugin(loop.sampler),
        "callbacks": [_plugin(cb) for cb in loop.callbacks],
        "federation": loop.federation.hparams,
        "trainer_kwargs": {
            k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
            for k, v in loop.trainer_kwargs.items()
        },
    }


def run_config(loop: FederatedLoop, model: LightningModule, num_clients: int) -> dict[str, Any]:
    """What the logger records as the run's config: the loop's hparams, the model's and the federation size."""
    config = loop_hparams(loop)
    config["model"] = {"class_path": class_path(model), "init_args": dict(getattr(model, "hparams", {}))}
    config["num_clients"] = num_clients
    return config
