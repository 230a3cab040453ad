"""keras_reg: one-line training-time regularisation for compiled Keras models.

Example:
    >>> import keras_reg
    >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    >>> keras_reg.adversarial_training(model, "Embedding-Token", epsilon=1.0)
    >>> model.fit(x, y)
"""

from keras_reg import callbacks, constraints, layers, losses, metrics, regularizers
from keras_reg.training import (
    AWP,
    FGM,
    PGD,
    SAM,
    VAT,
    FreeFGM,
    FreeLB,
    GradientPenalty,
    InputGradientPenalty,
    LossBalancing,
    NoiseTraining,
    ParameterGradientPenalty,
    RDrop,
    TrainingRegularizer,
    adversarial_training,
    awp,
    balance_losses,
    gradient_penalty,
    input_gradient_penalty,
    installed_regularizer,
    noise_training,
    parameter_gradient_penalty,
    r_drop,
    sharpness_aware_minimization,
    virtual_adversarial_training,
)
from keras_reg.training import install as install_regularizer
from keras_reg.training import remove as remove_regularization

__version__ = "0.2.0"

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
    "callbacks",
    "constraints",
    "gradient_penalty",
    "input_gradient_penalty",
    "install_regularizer",
    "installed_regularizer",
    "layers",
    "losses",
    "metrics",
    "noise_training",
    "parameter_gradient_penalty",
    "r_drop",
    "regularizers",
    "remove_regularization",
    "sharpness_aware_minimization",
    "virtual_adversarial_training",
]
