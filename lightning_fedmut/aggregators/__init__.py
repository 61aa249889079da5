"""Aggregators: streaming accumulators that turn client models into the next global model."""

from lightning_fedmut.aggregators.base import Aggregator
from lightning_fedmut.aggregators.fedavg import FedAvg

__all__ = ["Aggregator", "FedAvg"]
