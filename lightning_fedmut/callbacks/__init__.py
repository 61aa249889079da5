"""Federated callbacks: the hook menu, FedMut's mutation, the baselines' client-side methods, and Lightning
checkpoints of the global model."""

from lightning_fedmut.callbacks.base import FederatedCallback
from lightning_fedmut.callbacks.feddyn import FedDyn
from lightning_fedmut.callbacks.fedgen import FedGen
from lightning_fedmut.callbacks.fedmr import FedMR
from lightning_fedmut.callbacks.fedprox import FedProx
from lightning_fedmut.callbacks.model_checkpoint import GlobalModelCheckpoint
from lightning_fedmut.callbacks.mutation import MutationCallback
from lightning_fedmut.callbacks.sam import SAM
from lightning_fedmut.callbacks.scaffold import Scaffold
from lightning_fedmut.callbacks.server_report import ServerReport

__all__ = [
    "SAM",
    "FedDyn",
    "FedGen",
    "FedMR",
    "FedProx",
    "FederatedCallback",
    "GlobalModelCheckpoint",
    "MutationCallback",
    "Scaffold",
    "ServerReport",
]

from lightning_fedmut.callbacks.fedsmoo import FedSMOO
from lightning_fedmut.callbacks.swa import SWA

__all__ += ["SWA", "FedSMOO"]
