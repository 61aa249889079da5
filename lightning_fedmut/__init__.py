"""lightning_fedmut: federate any LightningModule with FedMut (Hu et al., AAAI 2024) and FedAvg."""

import logging as _logging

from lightning_fedmut.aggregators import Aggregator, FedAvg
from lightning_fedmut.callbacks import FederatedCallback, MutationCallback
from lightning_fedmut.data import Client, make_clients
from lightning_fedmut.exceptions import DivergenceError, NonFiniteWeightsError, RoundFailedError
from lightning_fedmut.loop import FederatedLoop, FederatedResult
from lightning_fedmut.tasks import ClientResult, ClientTask

__version__ = "0.1.0"

# Like Lightning's own logger: what the package says at INFO level (a run starting fresh, files it cleaned up)
# reaches the console unless the program configures logging itself.
_log = _logging.getLogger(__name__)
if not _log.handlers and not _logging.getLogger().hasHandlers():
    _log.setLevel(_logging.INFO)
    _log.addHandler(_logging.StreamHandler())

__all__ = [
    "Aggregator",
    "Client",
    "ClientResult",
    "ClientTask",
    "DivergenceError",
    "FedAvg",
    "FederatedCallback",
    "FederatedLoop",
    "FederatedResult",
    "MutationCallback",
    "NonFiniteWeightsError",
    "RoundFailedError",
    "make_clients",
]
