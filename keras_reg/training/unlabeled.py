"""Drawing one batch of unlabelled inputs per training step, inside the graph."""

import numpy as np

from keras_reg._compat import keras

ops = keras.ops


def _is_dataset(value):
    return type(value).__module__.startswith("tensorflow") and hasattr(
        value, "as_numpy_iterator"
    )


class UnlabeledSampler:
    """Draws unlabelled batches: uniformly from arrays, or the next dataset batch.

    Args:
        unlabeled: None (use the ``fit`` batch's inputs), an array or a nested
            structure (list/tuple/dict) of arrays with one first dimension, or a
            ``tf.data.Dataset`` yielding input batches (TensorFlow only).
        batch_size: Examples per draw from arrays; None: the ``fit`` batch size.
        seed: Seed of the draws.

    Raises:
        ValueError: Empty arrays, or arrays of different lengths.
    """

    def __init__(self, unlabeled, batch_size=None, seed=None):
        if batch_size is not None and (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or batch_size < 1
        ):
            raise ValueError(
                "`unlabeled_batch_size` must be a positive integer or None, "
                f"received unlabeled_batch_size={batch_size!r}."
            )
        self.batch_size = batch_size
        self.iterator = None
        self.arrays = None
        if unlabeled is None:
            return
        if _is_dataset(unlabeled):
            self.iterator = iter(unlabeled.repeat())
            return
        self.arrays = keras.tree.map_structure(np.asarray, unlabeled)
        lengths = {len(a) for a in keras.tree.flatten(self.arrays)}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "`unlabeled` must hold at least one example, and all its arrays "
                f"the same number of examples; received lengths {sorted(lengths)}."
            )
        self.size = lengths.pop()
        self.seed = keras.random.SeedGenerator(seed)

    def draw(self, step):
        """Returns this step's unlabelled inputs (the ``fit`` batch's if none given).

        Args:
            step: The `keras_reg.backend.base.Step` in progress.
        """
        if self.iterator is not None:
            return next(self.iterator)
        if self.arrays is None:
            return step.x
        size = self.batch_size or ops.shape(keras.tree.flatten(step.x)[0])[0]
        index = keras.random.randint((size,), 0, self.size, seed=step.seed(self.seed))
        return keras.tree.map_structure(
            lambda a: ops.take(a, index, axis=0), self.arrays
        )
