"""User-level central differential privacy (DP-FedAvg, McMahan et al., ICLR 2018) for any uniform method.

:class:`DPAggregator` noises the sum of the clients' clipped updates once and hands the noised mean to an inner
aggregator; :class:`DifferentialPrivacy` clips each update where the client trains and accounts for the run with
dp-accounting (:class:`PrivacyAccountant`); :class:`~lightning_fedmut.sampling.PoissonSampler` gives the sampling
whose amplification the accountant knows best. The presets :class:`~lightning_fedmut.algorithms.DPFedAvg` and
:class:`~lightning_fedmut.algorithms.DPFedMut` hold them. The arithmetic is in :mod:`lightning_fedmut.privacy.functional`.
"""

from lightning_fedmut.privacy.accountant import PrivacyAccountant, Sampling, sampling_of
from lightning_fedmut.privacy.aggregator import DPAggregator
from lightning_fedmut.privacy.callback import DifferentialPrivacy

__all__ = ["DPAggregator", "DifferentialPrivacy", "PrivacyAccountant", "Sampling", "sampling_of"]
