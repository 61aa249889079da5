"""Executing client work: executors turn tasks into results; the evaluator validates a module on data."""

from lightning_fedmut.execution.base import ClientExecutor, ClientTraining, TaskHooks
from lightning_fedmut.execution.client_logger import ClientLogger
from lightning_fedmut.execution.evaluation import Evaluator, evaluate
from lightning_fedmut.execution.fabric import FabricExecutor
from lightning_fedmut.execution.sequential import SequentialExecutor

__all__ = [
    "ClientExecutor",
    "ClientLogger",
    "ClientTraining",
    "Evaluator",
    "FabricExecutor",
    "SequentialExecutor",
    "TaskHooks",
    "evaluate",
]
