"""Aggregators: streaming accumulators that turn client models into the next global model."""

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg
from lightning_fedmut.aggregators.feddyn import FedDyn
from lightning_fedmut.aggregators.fedexp import FedExP, FedExPReport
from lightning_fedmut.aggregators.fednova import FedNova
from lightning_fedmut.aggregators.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi, ServerOptimizer

__all__ = [
    "Aggregator", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedDyn", "FedExP", "FedExPReport", "FedNova", "FedYogi",
    "ServerOptimizer",
]

from lightning_fedmut.aggregators.fedgloss import FedGloSS
from lightning_fedmut.aggregators.fedsmoo import FedSMOO

__all__ += ["FedGloSS", "FedSMOO"]
