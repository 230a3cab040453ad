"""Regularisers that act inside a training step, and their installer."""

from keras_reg.training.adversarial import FGM, adversarial_training
from keras_reg.training.gradient_penalty import (
    GradientPenalty,
    InputGradientPenalty,
    ParameterGradientPenalty,
    gradient_penalty,
    input_gradient_penalty,
    parameter_gradient_penalty,
)
from keras_reg.training.noise import NoiseTraining, noise_training
from keras_reg.training.regularizer import TrainingRegularizer
from keras_reg.training.step import install, installed_regularizer, remove
from keras_reg.training.virtual_adversarial import VAT, virtual_adversarial_training

__all__ = [
    "FGM",
    "GradientPenalty",
    "InputGradientPenalty",
    "NoiseTraining",
    "ParameterGradientPenalty",
    "TrainingRegularizer",
    "VAT",
    "adversarial_training",
    "gradient_penalty",
    "input_gradient_penalty",
    "install",
    "noise_training",
    "parameter_gradient_penalty",
    "installed_regularizer",
    "remove",
    "virtual_adversarial_training",
]
