"""Training-time losses: flooding and the multilabel softmax cross-entropy family.

Everything here is written with ``keras.ops`` only, registered for Keras
serialisation under the ``keras_reg`` package, and usable in ``compile``.
"""

from keras_reg.losses.flooding import Flooding
from keras_reg.losses.multilabel import (
    MultilabelCategoricalCrossentropy,
    multilabel_categorical_crossentropy,
)
from keras_reg.losses.sparse_multilabel import (
    SparseMultilabelCategoricalCrossentropy,
    sparse_multilabel_categorical_crossentropy,
)

__all__ = [
    "Flooding",
    "MultilabelCategoricalCrossentropy",
    "SparseMultilabelCategoricalCrossentropy",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
]
