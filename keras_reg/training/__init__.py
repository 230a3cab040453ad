"""Regularisers that act inside a training step, and their installer."""

from keras_reg.training.adversarial import FGM, adversarial_training
from keras_reg.training.regularizer import TrainingRegularizer
from keras_reg.training.step import install, installed_regularizer, remove
from keras_reg.training.virtual_adversarial import VAT, virtual_adversarial_training

__all__ = [
    "FGM",
    "TrainingRegularizer",
    "VAT",
    "adversarial_training",
    "install",
    "installed_regularizer",
    "remove",
    "virtual_adversarial_training",
]
