"""What the loop says and does when clients fail or the model diverges."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_fedmut.exceptions import (
    ClientFailureError,
    DivergenceError,
    NonFiniteWeightsError,
    Preempted,
    RoundFailedError,
)
from lightning_fedmut.functional.state import first_non_finite
from lightning_fedmut.loop.connectors import tracking
from lightning_fedmut.utilities.warnings import warn_user

if TYPE_CHECKING:
    from lightning_fedmut.loop import FederatedLoop
    from lightning_fedmut.tasks import ClientResult


def divergence_causes(loop: FederatedLoop) -> str:
    """The likely causes of a divergence: what the callbacks know (FedMut: its radius), then the learning rate."""
    hints = [hint for cb in loop.callbacks if (hint := cb.divergence_hint(loop))]
    return ", or ".join([*hints, "a learning rate too high"])


def check_global_finite(loop: FederatedLoop, state: Mapping[str, Tensor]) -> None:
    """The aggregate written into the global model must be finite."""
    name = first_non_finite(state)
    if name is not None:
        raise DivergenceError(
            f"The global model is not finite after aggregating round {loop.round} ({name!r} holds NaN or Inf)."
            f" Likely causes: {divergence_causes(loop)}."
        )


def round_failed(loop: FederatedLoop, trained: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
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
    warn_user(message + " The round is skipped; the global model is unchanged.")


#: How many failed results in a row, at the start of a fit, with one error type, stop it before the rest train.
EARLY_FAILURES = 3
CLIENT_FAILURE_POLICIES = ("raise_systematic", "isolate")


def client_failed(loop: FederatedLoop, result: ClientResult, first_results: list[ClientResult] | None) -> None:
    """A client failed: say so, with its id; stop at once when the fit's first clients all fail alike.

    ``first_results`` are the results so far of the fit's first round (``None`` in later rounds).
    """
    error = result.error
    if loop.is_global_zero:
        warn_user(f"Client {result.client.id!r} failed in round {loop.round} (slot {result.task.slot}) and is left"
                  f" out of the aggregate: {result.error_type}: {error}")
    if loop.on_client_failure != "raise_systematic" or first_results is None or len(first_results) > EARLY_FAILURES:
        return
    head = first_results[:EARLY_FAILURES]
    if len(head) == min(EARLY_FAILURES, loop.clients_per_round) and _same_failure(head):
        raise _systematic(loop, head, f"the first {len(head)} clients of the run")


def round_clients_done(loop: FederatedLoop, results: list[ClientResult], first_round: bool) -> None:
    """After a round's clients: stop when all failed alike, or when the first round's training changed nothing."""
    if loop.on_client_failure != "raise_systematic" or not results:
        return
    failed = [r for r in results if r.failed]
    if len(failed) == len(results) and _same_failure(failed) and failed[0].error_type != NonFiniteWeightsError.__name__:
        raise _systematic(loop, failed, f"all {len(failed)} clients of round {loop.round}")
    trained = [r for r in results if not r.failed]
    if first_round and trained and all(r.num_steps == 0 for r in trained):
        raise ClientFailureError(
            f"No client took an optimizer step in round {loop.round}: training changes nothing. Check that"
            " `configure_optimizers` returns an optimizer, that `training_step` returns the loss (not None), and"
            " that `trainer_kwargs` does not set `limit_train_batches=0`."
        )


def _same_failure(results: list[ClientResult]) -> bool:
    return all(r.failed for r in results) and len({r.error_type for r in results}) == 1


def _systematic(loop: FederatedLoop, failed: list[ClientResult], who: str) -> ClientFailureError:
    first = failed[0]
    detail = getattr(first.error, "traceback_text", "")
    error = ClientFailureError(
        f"{who.capitalize()} failed with {first.error_type}: {first.error}. A failure that repeats on every client is"
        " a bug in the setup (the model, the data, `trainer_kwargs`), not one faulty client: the run stops here."
        f" Clients: {', '.join(repr(r.client.id) for r in failed[:5])}. To keep going past intermittent client"
        " failures, pass `on_client_failure='isolate'`."
        + (f"\nThe client's traceback:\n{detail}" if detail else "")
    )
    error.__cause__ = first.error
    return error


@contextmanager
def fit_guard(loop: FederatedLoop, module: LightningModule) -> Iterator[None]:
    """Around a fit: on Ctrl+C or SIGTERM among the clients, or a worker that failed or went silent there, save
    the rounds before; on any exception, tell the callbacks and the logger; always tear down."""
    from lightning_fedmut.distributed.launcher import WorkerError

    try:
        yield
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, Preempted, WorkerError)) and loop._in_client_phase:
            loop.checkpoint_connector.save_on_interrupt(loop, module)
        if isinstance(exc, (KeyboardInterrupt, Preempted)):
            loop._signals.explain(exc, loop._in_client_phase)
        loop._call("on_exception", module, exc)
        tracking.finish_run(loop._logger, "failed")
        raise
    finally:
        loop._teardown(module)
