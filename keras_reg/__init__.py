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
    LossBalancing,
    TrainingRegularizer,
    adversarial_training,
    balance_losses,
    installed_regularizer,
    virtual_adversarial_training,
)
from keras_reg.training import install as install_regularizer
from keras_reg.training import remove as remove_regularization

__version__ = "0.1.0"

__all__ = [
    "FGM",
    "LossBalancing",
    "TrainingRegularizer",
    "VAT",
    "adversarial_training",
    "balance_losses",
    "callbacks",
    "install_regularizer",
    "installed_regularizer",
    "losses",
    "metrics",
    "remove_regularization",
    "virtual_adversarial_training",
]
