"""Flatness analysis of any LightningModule: loss landscapes, Hessian spectrum and trace, sharpness.

Pure functions over a module and a ``DataLoader``. The loss of a batch is what the module's
``training_step(batch, batch_idx)`` returns, or ``loss_fn(module, batch)`` when given; the loss of the data
is the mean over batches weighted by batch size. Every function runs on the module's device with the
module in eval mode, reads the batches once (a shuffling loader's order drawn from the function's
``seed``), and leaves every parameter and buffer bit for bit as it found them, each submodule in its mode,
and the global random state untouched. Results are floats, NumPy arrays and dicts of tensors;
:mod:`lightning_fedmut.plotting` draws the landscapes. :class:`FlatnessCallback` logs the figures of the
global model during a federated run.
"""

from lightning_fedmut.analysis.callback import FlatnessCallback
from lightning_fedmut.analysis.directions import random_direction
from lightning_fedmut.analysis.hessian import hessian_eigenvalues, hessian_trace, hessian_vector_product
from lightning_fedmut.analysis.landscape import loss_landscape_1d, loss_landscape_2d
from lightning_fedmut.analysis.perturbation import sharpness

__all__ = [
    "FlatnessCallback",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_vector_product",
    "loss_landscape_1d",
    "loss_landscape_2d",
    "random_direction",
    "sharpness",
]
