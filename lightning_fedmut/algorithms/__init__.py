"""Federated methods: :class:`FederatedAlgorithm`, one preset per method, and a registry of methods by name.

A method is a named bundle of the loop's components (a start-model component, local components, an aggregator,
a sampler); ``FederatedLoop(algorithm=FedMut())`` runs it. ``lightning_fedmut.algorithms.FedAvg`` is the
method, ``lightning_fedmut.aggregators.FedAvg`` (and ``lightning_fedmut.FedAvg``) the aggregator.
"""

from lightning_fedmut.algorithms.base import FederatedAlgorithm
from lightning_fedmut.algorithms.clustered import ClusteredSampling
from lightning_fedmut.algorithms.dp import DPFedAvg, DPFedMut
from lightning_fedmut.algorithms.fedavg import FedAvg
from lightning_fedmut.algorithms.feddyn import FedDyn
from lightning_fedmut.algorithms.fedexp import FedExP
from lightning_fedmut.algorithms.fedgen import FedGen
from lightning_fedmut.algorithms.fedgloss import FedGloSS
from lightning_fedmut.algorithms.fedlesam import FedLESAM
from lightning_fedmut.algorithms.fedmr import FedMR
from lightning_fedmut.algorithms.fedmut import FedMut
from lightning_fedmut.algorithms.fednova import FedNova
from lightning_fedmut.algorithms.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from lightning_fedmut.algorithms.fedprox import FedProx
from lightning_fedmut.algorithms.fedsam import FedASAM, FedSAM
from lightning_fedmut.algorithms.fedsmoo import FedSMOO
from lightning_fedmut.algorithms.mofedsam import MoFedSAM
from lightning_fedmut.algorithms.personalised import FedBN, FedPer, FedRep
from lightning_fedmut.algorithms.registry import (
    algorithm_class,
    build_algorithm,
    names,
    register,
    resolve_name,
    unregister,
)
from lightning_fedmut.algorithms.scaffold import SCAFFOLD
from lightning_fedmut.algorithms.swa import FedASAMSWA, FedAvgSWA, FedSAMSWA
from lightning_fedmut.callbacks.base import LocalCallback, StartModelCallback

__all__ = [
    "SCAFFOLD",
    "ClusteredSampling",
    "DPFedAvg",
    "DPFedMut",
    "FedASAM",
    "FedASAMSWA",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedAvgSWA",
    "FedBN",
    "FedDyn",
    "FedExP",
    "FedGen",
    "FedGloSS",
    "FedLESAM",
    "FedMR",
    "FedMut",
    "FedNova",
    "FedPer",
    "FedProx",
    "FedRep",
    "FedSAM",
    "FedSAMSWA",
    "FedSMOO",
    "FedYogi",
    "FederatedAlgorithm",
    "LocalCallback",
    "MoFedSAM",
    "StartModelCallback",
    "algorithm_class",
    "build_algorithm",
    "names",
    "register",
    "resolve_name",
    "unregister",
]
