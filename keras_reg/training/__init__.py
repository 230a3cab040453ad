"""Regularisers that act inside a training step, and their installer.

The package is organised by family: ``core`` (the protocol, the installer,
schedules, perturbation sites), ``adversarial`` (FGM, PGD, FreeLB, FreeFGM,
VAT), ``penalties`` (gradient, parameter and input penalties; noise),
``weight_space`` (SAM/ASAM, AWP, R-Drop) and ``multitask`` (loss balancing).
"""

from keras_reg.training.adversarial.adversarial_training import adversarial_training
from keras_reg.training.adversarial.fgm import FGM
from keras_reg.training.adversarial.free_fgm import FreeFGM
from keras_reg.training.adversarial.freelb import FreeLB
from keras_reg.training.adversarial.pgd import PGD
from keras_reg.training.adversarial.vat import VAT, virtual_adversarial_training
from keras_reg.training.core.installer import install, installed_regularizer, remove
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.training.multitask.balancing import LossBalancing, balance_losses
from keras_reg.training.penalties.gradient_penalty import (
    GradientPenalty,
    InputGradientPenalty,
    ParameterGradientPenalty,
    gradient_penalty,
    input_gradient_penalty,
    parameter_gradient_penalty,
)
from keras_reg.training.penalties.noise import NoiseTraining, noise_training
from keras_reg.training.weight_space.rdrop import RDrop, r_drop
from keras_reg.training.weight_space.weight_perturbation import (
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
