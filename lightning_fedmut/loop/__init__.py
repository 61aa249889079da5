"""The round loop, as engineering: :class:`FederatedLoop` and the parts it is made of.

- ``loop.py``: :class:`FederatedLoop`, ``fit`` and a round as a short sequence of calls;
- ``run_state.py``: :class:`RunState`, what a fit has done (history, client history, failures, timings, progress);
- ``call.py``: the one place the federated callbacks' hooks are dispatched;
- ``checks.py``, ``config.py``, ``task_hooks.py``: the arguments' checks, the run config, the work done where a
  client trains;
- ``connectors/``: checkpoint, signals, failures, logger (and the tracker's run): each owns the state it writes.

The research code (methods, their state and their figures) lives in :mod:`lightning_fedmut.algorithms`,
:mod:`lightning_fedmut.callbacks`, :mod:`lightning_fedmut.aggregators` and :mod:`lightning_fedmut.sampling`.
``FederatedLoop`` loads on first use, so the connectors import without it (the workers' collectives use the
signal connector).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_fedmut.utilities.lazy import lazy_exports

__all__ = ["FederatedLoop", "FederatedResult", "RunState"]

_EXPORTS = {
    "FederatedLoop": "lightning_fedmut.loop.loop",
    "FederatedResult": "lightning_fedmut.result",
    "RunState": "lightning_fedmut.loop.run_state",
}

if TYPE_CHECKING:
    from lightning_fedmut.loop.loop import FederatedLoop
    from lightning_fedmut.loop.run_state import RunState
    from lightning_fedmut.result import FederatedResult


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
