"""Errors of a federated run: those that stop it, and the one recorded for a client whose weights diverged."""

__all__ = ["DivergenceError", "NonFiniteWeightsError", "RoundFailedError"]


class DivergenceError(FloatingPointError):
    """The global model, or the start model the server handed a client, is no longer finite."""


class RoundFailedError(RuntimeError):
    """Too few clients of a round trained successfully and ``on_round_failure="raise"``."""


class NonFiniteWeightsError(FloatingPointError):
    """A client's trained weights hold NaN or Inf.

    Never raised out of ``fit``: the client is recorded in ``result.failures`` with this type and left out of
    the aggregate.
    """
