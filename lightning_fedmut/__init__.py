"""lightning_fedmut: federate any LightningModule with FedMut (Hu et al., AAAI 2024) and FedAvg."""

from lightning_fedmut.aggregators import Aggregator, FedAvg
from lightning_fedmut.callbacks import FederatedCallback, MutationCallback
from lightning_fedmut.data import Client, make_clients
from lightning_fedmut.exceptions import DivergenceError, NonFiniteWeightsError, RoundFailedError
from lightning_fedmut.loop import FederatedLoop, FederatedResult
from lightning_fedmut.tasks import ClientResult, ClientTask

__version__ = "0.1.0"

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
