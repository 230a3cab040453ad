"""Regularisers that act inside a training step, and their installer."""

from keras_reg.training.adversarial import FGM, adversarial_training
from keras_reg.training.free_fgm import FreeFGM
from keras_reg.training.freelb import FreeLB
from keras_reg.training.gradient_penalty import (
    GradientPenalty,
    InputGradientPenalty,
    ParameterGradientPenalty,
    gradient_penalty,
    input_gradient_penalty,
    parameter_gradient_penalty,
)
from keras_reg.training.multitask import LossBalancing, balance_losses
from keras_reg.training.noise import NoiseTraining, noise_training
from keras_reg.training.pgd import PGD
from keras_reg.training.rdrop import RDrop, r_drop
from keras_reg.training.regularizer import TrainingRegularizer
from keras_reg.training.step import install, installed_regularizer, remove
from keras_reg.training.virtual_adversarial import VAT, virtual_adversarial_training
from keras_reg.training.weight_perturbation import (
    AWP,
    SAM,
    awp,
    sharpness_aware_minimization,
)

__all__ = [
    "AWP",
    "FGM",
    "FreeFGM",
    "FreeLB",
    "GradientPenalty",
    "InputGradientPenalty",
    "LossBalancing",
    "NoiseTraining",
    "PGD",
    "ParameterGradientPenalty",
    "RDrop",
    "SAM",
    "TrainingRegularizer",
    "VAT",
    "adversarial_training",
    "awp",
    "balance_losses",
    "gradient_penalty",
    "input_gradient_penalty",
    "install",
    "installed_regularizer",
    "noise_training",
    "parameter_gradient_penalty",
    "r_drop",
    "remove",
    "sharpness_aware_minimization",
    "virtual_adversarial_training",
]
