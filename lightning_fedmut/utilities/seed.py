"""Independent random streams derived from one run seed."""

from __future__ import annotations

import numpy as np

SAMPLING_STREAM = 0
MUTATION_STREAM = 1
CLIENT_STREAM = 2
FEDMR_STREAM = 3
CLUSTERED_SAMPLING_STREAM = 4


def derive_seed(seed: int, *path: int) -> int:
    """A 32-bit seed for the stream named by ``path``, independent of the others.

    Examples:
        >>> derive_seed(0, 1) == derive_seed(0, 1), derive_seed(0, 1) == derive_seed(0, 2)
        (True, False)
    """
    return int(np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(1, dtype=np.uint32)[0])
