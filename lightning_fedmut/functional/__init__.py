"""Pure tensor functions behind FedMut, the aggregators and the baselines.

Everything here works on lists of tensors (one per ``state_dict`` entry) and holds no state, so it can
be tested without running a federation.
"""

from lightning_fedmut.functional.aggregation import accumulate_, finalize_mean_, integer_max_
from lightning_fedmut.functional.clustering import (
    clustered_distributions,
    update_similarity,
    ward_linkage,
    weight_clusters,
)
from lightning_fedmut.functional.distillation import (
    diversity_loss,
    label_counts,
    label_weights,
    latent_kl_gradient,
    teacher_loss,
)
from lightning_fedmut.functional.mutation import (
    acceleration_at,
    global_delta_,
    mutate_,
    mutation_coefficients,
)
from lightning_fedmut.functional.recombination import recombination_table, recombine
from lightning_fedmut.functional.server_optim import (
    adaptive_step_,
    apply_step_,
    extrapolated_lr,
    momentum_step_,
    pseudo_gradient_,
    squared_distance,
    squared_norm,
)
from lightning_fedmut.functional.state import (
    copy_,
    federated_parameters,
    first_non_finite,
    floating_keys,
    frozen_keys,
    is_floating,
    snapshot,
)

__all__ = [
    "acceleration_at",
    "accumulate_",
    "adaptive_step_",
    "apply_step_",
    "clustered_distributions",
    "copy_",
    "diversity_loss",
    "extrapolated_lr",
    "federated_parameters",
    "finalize_mean_",
    "first_non_finite",
    "floating_keys",
    "frozen_keys",
    "global_delta_",
    "integer_max_",
    "is_floating",
    "label_counts",
    "label_weights",
    "latent_kl_gradient",
    "momentum_step_",
    "mutate_",
    "mutation_coefficients",
    "pseudo_gradient_",
    "recombination_table",
    "recombine",
    "snapshot",
    "squared_distance",
    "squared_norm",
    "teacher_loss",
    "update_similarity",
    "ward_linkage",
    "weight_clusters",
]
