"""Errors of a federated run: those that stop it, and the one recorded for a client whose weights diverged."""

__all__ = ["ClientDataExhaustedError", "ClientFailureError", "ClientTimeoutError", "DivergenceError",
           "NonFiniteWeightsError", "Preempted", "RoundFailedError"]


class DivergenceError(FloatingPointError):
    """The global model, or the start model the server handed a client, is no longer finite."""


class RoundFailedError(RuntimeError):
    """Too few clients of a round trained successfully and ``on_round_failure="raise"``."""


class NonFiniteWeightsError(FloatingPointError):
    """A client's trained weights hold NaN or Inf.

    Never raised out of ``fit``: the client is recorded in ``result.failures`` with this type and left out of
    the aggregate.
    """


class ClientFailureError(RuntimeError):
    """Every client of a round failed the same way (or no client's training changed anything): a bug in the
    setup, not in one client. Raised at once, chained to the first client's own exception."""


class ClientDataExhaustedError(RuntimeError):
    """A client's data yielded no batch in an epoch (an empty, or one-shot iterable, data loader).

    Recorded as that client's failure: with ``local_steps`` the client would otherwise loop forever.
    """


class ClientTimeoutError(TimeoutError):
    """A client trained longer than the loop's ``client_timeout``.

    Never raised out of ``fit``: the client is recorded in ``result.failures`` with this type and its id, and
    left out of the aggregate.
    """


class Preempted(SystemExit):
    """``fit`` was stopped by SIGTERM (a scheduler's preemption); the exit code is 143.

    The last completed round is saved when the loop has a ``checkpoint_dir``; resume with ``ckpt_path="last"``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message
