"""lightning_fedmut: federate any LightningModule with FedMut (Hu et al., AAAI 2024) and the baselines.

The names below load on first use, so ``lightning-fedmut --help`` and ``--version`` start without importing
torch or Lightning; ``from lightning_fedmut import FederatedLoop`` works as usual.
"""

from __future__ import annotations

import logging as _logging
from typing import TYPE_CHECKING

from lightning_fedmut.utilities.lazy import lazy_exports

__version__ = "0.1.0"

#: Each top-level name and the module that defines it.
_EXPORTS = {
    "Aggregator": "lightning_fedmut.aggregators",
    "Client": "lightning_fedmut.data",
    "ClientResult": "lightning_fedmut.tasks",
    "ClientTask": "lightning_fedmut.tasks",
    "DivergenceError": "lightning_fedmut.exceptions",
    "FedAvg": "lightning_fedmut.aggregators",
    "FederatedCallback": "lightning_fedmut.callbacks",
    "FederatedLoop": "lightning_fedmut.loop",
    "FederatedResult": "lightning_fedmut.loop",
    "MutationCallback": "lightning_fedmut.callbacks",
    "NonFiniteWeightsError": "lightning_fedmut.exceptions",
    "RoundFailedError": "lightning_fedmut.exceptions",
    "make_clients": "lightning_fedmut.data",
}

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

if TYPE_CHECKING:
    from lightning_fedmut.aggregators import Aggregator, FedAvg
    from lightning_fedmut.callbacks import FederatedCallback, MutationCallback
    from lightning_fedmut.data import Client, make_clients
    from lightning_fedmut.exceptions import DivergenceError, NonFiniteWeightsError, RoundFailedError
    from lightning_fedmut.loop import FederatedLoop, FederatedResult
    from lightning_fedmut.tasks import ClientResult, ClientTask


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


# Like Lightning's own logger: what the package says at INFO level (a run starting fresh, files it cleaned up)
# reaches the console unless the program configures logging itself.
_log = _logging.getLogger(__name__)
if not _log.handlers and not _logging.getLogger().hasHandlers():
    _log.setLevel(_logging.INFO)
    _log.addHandler(_logging.StreamHandler())
