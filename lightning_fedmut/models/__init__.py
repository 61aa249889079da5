"""Built-in LightningModules for the examples, tests and command line."""

from lightning_fedmut.models.classifier import Classifier
from lightning_fedmut.models.cnn import DigitsCNN, digits_cnn

__all__ = ["Classifier", "DigitsCNN", "digits_cnn"]
