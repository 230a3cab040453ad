"""Regularisers that act inside a training step, and their installer."""

from keras_reg.training.adversarial import FGM, adversarial_training
from keras_reg.training.multitask import LossBalancing, balance_losses
from keras_reg.training.regularizer import TrainingRegularizer
from keras_reg.training.step import install, installed_regularizer, remove
from keras_reg.training.virtual_adversarial import VAT, virtual_adversarial_training

__all__ = [
    "FGM",
    "LossBalancing",
    "TrainingRegularizer",
    "VAT",
    "adversarial_training",
    "balance_losses",
    "install",
    "installed_regularizer",
    "remove",
    "virtual_adversarial_training",
]
