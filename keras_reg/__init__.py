"""keras_reg: one-line training-time regularisation for compiled Keras models.

Example:
    >>> import keras_reg
    >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    >>> keras_reg.adversarial_training(model, "Embedding-Token", epsilon=1.0)
    >>> model.fit(x, y)
"""

from keras_reg import callbacks, losses, metrics
from keras_reg.training import (
    FGM,
    VAT,
    GradientPenalty,
    InputGradientPenalty,
    NoiseTraining,
    ParameterGradientPenalty,
    TrainingRegularizer,
    adversarial_training,
    gradient_penalty,
    input_gradient_penalty,
    installed_regularizer,
    noise_training,
    parameter_gradient_penalty,
    virtual_adversarial_training,
)
from keras_reg.training import install as install_regularizer
from keras_reg.training import remove as remove_regularization

__version__ = "0.1.0"

__all__ = [
    "FGM",
    "GradientPenalty",
    "InputGradientPenalty",
    "NoiseTraining",
    "ParameterGradientPenalty",
    "TrainingRegularizer",
    "VAT",
    "adversarial_training",
    "callbacks",
    "gradient_penalty",
    "input_gradient_penalty",
    "install_regularizer",
    "installed_regularizer",
    "losses",
    "metrics",
    "noise_training",
    "parameter_gradient_penalty",
    "remove_regularization",
    "virtual_adversarial_training",
]
