"""Pure tensor functions behind FedMut and the aggregators.

Everything here works on lists of tensors (one per ``state_dict`` entry) and holds no state, so it can
be tested without running a federation.
"""

from lightning_fedmut.functional.aggregation import accumulate_, finalize_mean_, integer_max_
from lightning_fedmut.functional.mutation import (
    acceleration_at,
    global_delta_,
    mutate_,
    mutation_coefficients,
)
from lightning_fedmut.functional.state import copy_, first_non_finite, floating_keys, is_floating

__all__ = [
    "acceleration_at",
    "accumulate_",
    "copy_",
    "finalize_mean_",
    "first_non_finite",
    "floating_keys",
    "global_delta_",
    "integer_max_",
    "is_floating",
    "mutate_",
    "mutation_coefficients",
]
