"""What the loop says and does when clients fail or the model diverges."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from lightning_fedmut.exceptions import DivergenceError, NonFiniteWeightsError, RoundFailedError

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop


def divergence_causes(loop: FederatedLoop) -> str:
    """The likely causes of a divergence: what the callbacks know (FedMut: its radius), then the learning rate."""
    hints = [hint for cb in loop.callbacks if (hint := cb.divergence_hint(loop))]
    return ", or ".join([*hints, "a learning rate too high"])


def round_failed(loop: FederatedLoop, trained: list[dict[str, Any]], failed: list[dict[str, Any]],
                 stacklevel: int) -> None:
    """A round with fewer than ``min_clients_per_round`` successes: raise, or warn that it is skipped."""
    if failed and not trained and all(f["type"] == NonFiniteWeightsError.__name__ for f in failed):
        raise DivergenceError(
            f"Every client of round {loop.round} returned non-finite weights: training diverged. Likely causes:"
            f" {divergence_causes(loop)}. The global model is left at round {loop.round - 1}; resume from"
            " the last checkpoint with other settings."
        )
    summary = "; ".join(f"client {f['client_id']!r}: {f['type']}: {f['message']}" for f in failed[:5])
    message = (
        f"Round {loop.round}: {len(trained)} of {len(loop.sampled_clients)} clients succeeded, fewer than"
        f" `min_clients_per_round`={loop.min_clients_per_round}. Failures: {summary}."
    )
    if loop.on_round_failure == "raise":
        raise RoundFailedError(message)
    warnings.warn(message + " The round is skipped; the global model is unchanged.", RuntimeWarning,
                  stacklevel=stacklevel)
