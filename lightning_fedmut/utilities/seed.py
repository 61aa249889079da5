"""Independent random streams derived from one run seed."""

from __future__ import annotations

import numpy as np

SAMPLING_STREAM = 0
MUTATION_STREAM = 1
CLIENT_STREAM = 2
FEDMR_STREAM = 3
CLUSTERED_SAMPLING_STREAM = 4
PRIVACY_STREAM = 5
FEDGEN_STREAM = 6


def derive_seed(seed: int, *path: int) -> int:
    """A 32-bit seed for the stream named by ``path``, independent of the others.

    Examples:
        >>> derive_seed(0, 1) == derive_seed(0, 1), derive_seed(0, 1) == derive_seed(0, 2)
        (True, False)
    """
    return int(np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(1, dtype=np.uint32)[0])


def seed_process(seed: int) -> None:
    """Seed this process's global generators: torch's on the CPU and on every device that is there, numpy's, ``random``.

    What ``torch.manual_seed`` does, without queueing a seed for each device kind this machine lacks: for
    those, torch records the caller's whole stack every time, which costs more than a small client's step.

    Examples:
        >>> import torch
        >>> seed_process(3); a = torch.rand(1)
        >>> seed_process(3); bool(torch.equal(a, torch.rand(1)))
        True
    """
    import random

    import torch

    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(seed)
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        xpu.manual_seed_all(seed)
    random.seed(seed)
    np.random.seed(seed)
