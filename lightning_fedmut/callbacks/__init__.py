"""Federated callbacks: the hook menu and FedMut's mutation."""

from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.callbacks.mutation import MutationCallback

__all__ = ["FederatedCallback", "MutationCallback"]
