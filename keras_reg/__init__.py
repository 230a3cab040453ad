"""keras_reg: one-line training-time regularisation for compiled Keras models.

The public names are the submodules below, the installer's three functions,
and every regulariser class with its installer function, as exported by
`keras_reg.training.core.export.export` (``keras_reg.FGM`` and
``keras_reg.fgm``, ...): ``__all__`` lists them all.

Example:
    >>> import keras_reg
    >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    >>> keras_reg.fgm(model, "Embedding-Token", epsilon=1.0)
    >>> model.fit(x, y)
"""

from keras_reg import callbacks, constraints, layers, losses, metrics, regularizers
from keras_reg.training import TrainingRegularizer, installed_regularizer
from keras_reg.training import install as install_regularizer
from keras_reg.training import remove as remove_regularization
from keras_reg.training.core import export as _export

__version__ = "0.2.0"

globals().update(_export.public())

__all__ = [
    "TrainingRegularizer",
    "callbacks",
    "constraints",
    "install_regularizer",
    "installed_regularizer",
    "layers",
    "losses",
    "metrics",
    "regularizers",
    "remove_regularization",
]
__all__ += list(_export.public())
