"""Federated callbacks: the hook menu, FedMut's mutation, and Lightning checkpoints of the global model."""

from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.callbacks.model_checkpoint import GlobalModelCheckpoint
from lightning_fedmut.callbacks.mutation import MutationCallback

__all__ = ["FederatedCallback", "GlobalModelCheckpoint", "MutationCallback"]
