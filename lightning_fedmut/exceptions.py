"""Errors a federated run raises when it cannot go on."""


class DivergenceError(FloatingPointError):
    """The global model, or the start model the server handed a client, is no longer finite."""


class RoundFailedError(RuntimeError):
    """Too few clients of a round trained successfully and ``on_round_failure="raise"``."""
