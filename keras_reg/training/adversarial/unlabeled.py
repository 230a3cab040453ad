"""Drawing one batch of unlabelled inputs per training step, inside the graph.

The arrays are checked when they are handed over (`UnlabeledSampler`) and
against the model when VAT is installed (`check_against_model`), so a bad
array fails with a message that names it instead of deep inside a traced step.
"""

import numbers

import numpy as np

from keras_reg._compat import keras
from keras_reg.backend import keras_internals
from keras_reg.training.core.regularizer import PicklableSeeds
from keras_reg.validation import integer_argument

ops = keras.ops


def _is_dataset(value):
    return type(value).__module__.startswith("tensorflow") and hasattr(
        value, "as_numpy_iterator"
    )


_HOW = (
    "Pass a NumPy array (examples on the first axis), a list or dict of arrays "
    "for a multi-input model, or a tf.data.Dataset of batches on TensorFlow."
)


def _as_array(leaf):
    """Returns one unlabelled leaf as a NumPy array, or raises a clear error."""
    if isinstance(leaf, (numbers.Number, np.generic)):
        raise ValueError(
            f"`unlabeled` is (or holds) a Python list of numbers (found {leaf!r}); "
            "VAT reads a list as one array per model input. Convert the data "
            "first, e.g. unlabeled=np.asarray(x_unlabeled, dtype='float32') (or "
            "'int32' for token ids). " + _HOW
        )
    if not (hasattr(leaf, "__array__") or hasattr(leaf, "shape")):
        raise ValueError(
            f"`unlabeled` must hold arrays; received a {type(leaf).__name__}. "
            "VAT draws a batch inside the compiled step, so it needs all the "
            "data up front: a generator or iterator cannot be read there "
            "(collect it with np.concatenate(list(batches)), or wrap it in "
            "tf.data.Dataset.from_generator on TensorFlow). " + _HOW
        )
    array = np.asarray(leaf)
    if array.ndim == 0 or array.dtype == object:
        raise ValueError(
            f"`unlabeled` must hold arrays with examples on the first axis; "
            f"received an array of shape {array.shape} and dtype {array.dtype}. " + _HOW
        )
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(
        array.dtype, np.complexfloating
    ):
        bad = ~np.isfinite(array)
        if bad.any():
            rows = np.unique(np.nonzero(bad.reshape(len(array), -1))[0])
            raise ValueError(
                f"`unlabeled` holds {int(bad.sum())} NaN or infinite values, in "
                f"{len(rows)} examples (the first at index {int(rows[0])}); they "
                "would make every VAT loss NaN. Drop or impute those examples."
            )
    return array


class UnlabeledSampler(PicklableSeeds):
    """Draws unlabelled batches: uniformly from arrays, or the next dataset batch.

    Args:
        unlabeled: None (use the ``fit`` batch's inputs), an array or a nested
            structure (list/tuple/dict) of arrays with one first dimension, or a
            ``tf.data.Dataset`` yielding input batches (TensorFlow only).
        batch_size: Examples per draw from arrays (a Python or NumPy integer);
            None: the ``fit`` batch size.
        seed: Seed of the draws.

    Raises:
        ValueError: Empty arrays, arrays of different lengths, NaN values, a
            list of numbers, a generator, or a bad ``batch_size``.
    """

    def __init__(self, unlabeled, batch_size=None, seed=None):
        if batch_size is not None:
            batch_size = integer_argument(
                "unlabeled_batch_size", batch_size, 1, example=64
            )
        self.batch_size = batch_size
        self.iterator = None
        self.arrays = None
        if batch_size is not None and (unlabeled is None or _is_dataset(unlabeled)):
            source = "no `unlabeled` data" if unlabeled is None else "a dataset"
            raise ValueError(
                f"`unlabeled_batch_size` sets how many examples are drawn from "
                f"`unlabeled` arrays; received unlabeled_batch_size={batch_size} "
                f"with {source}, where it would be ignored (the unlabelled batch "
                "is then the `fit` batch's inputs, or the dataset's own batch). "
                "Pass unlabeled=<arrays of inputs>, or leave "
                "unlabeled_batch_size=None."
            )
        if unlabeled is None:
            return
        if _is_dataset(unlabeled):
            self.iterator = iter(unlabeled.repeat())
            return
        self.arrays = keras.tree.map_structure(_as_array, unlabeled)
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
        return self.draw_indexed(step)[0]

    def draw_indexed(self, step):
        """Returns ``(inputs, index)``: `draw`'s inputs and their rows in the arrays.

        ``index`` holds this replica's example indices into the arrays (int32),
        or is None where the inputs are the ``fit`` batch's or a dataset's.
        """
        if self.iterator is not None:
            return next(self.iterator), None
        if self.arrays is None:
            return step.x, None
        # One draw for the global batch; each replica keeps its own rows, so
        # the replicas draw distinct examples, as one device would.
        size = self.batch_size
        if size is None:
            size = ops.shape(keras.tree.flatten(step.x)[0])[0] * step.replicas()
        seed = step.seed(self.seed)
        index = step.shard(
            keras.random.randint((size,), 0, self.size, seed=seed)
        )
        inputs = keras.tree.map_structure(
            lambda a: ops.take(a, index, axis=0), self.arrays
        )
        return inputs, index


def _model_inputs(model):
    """Returns the model's symbolic inputs as a list or dict, or None if unknown."""
    structure = None
    for name in ("input", "inputs"):  # Keras 3's Sequential has only `inputs`
        try:
            structure = getattr(model, name)
        except (AttributeError, ValueError):
            continue
        if structure is not None:
            break
    if structure is None:
        return None
    if isinstance(structure, dict):
        return structure
    flat = keras.tree.flatten(structure)
    return flat if all(hasattr(t, "shape") for t in flat) else None


def _shape(tensor):
    return tuple(None if d is None else int(d) for d in list(tensor.shape))


def _fits(expected, received):
    """Whether arrays of ``received`` shape suit an input of ``expected`` shape."""
    expected, received = expected[1:], received[1:]
    if len(expected) == len(received) + 1 and expected[-1] == 1:
        expected = expected[:-1]  # Keras adds a last axis of size 1 itself
    return len(expected) == len(received) and all(
        e is None or e == r for e, r in zip(expected, received)
    )


def _pairs(arrays, inputs):
    """Returns [(label, array, input tensor)] or raises if the counts differ."""
    if isinstance(inputs, dict) and isinstance(arrays, dict):
        if set(arrays) != set(inputs):
            raise ValueError(
                f"`unlabeled` has the keys {sorted(arrays)}, but the model's "
                f"inputs are {sorted(inputs)}. Pass one array per model input."
            )
        return [(repr(k), arrays[k], inputs[k]) for k in sorted(inputs)]
    flat_arrays = keras.tree.flatten(arrays)
    flat_inputs = keras.tree.flatten(inputs)
    if len(flat_arrays) != len(flat_inputs):
        names = [getattr(t, "name", "?") for t in flat_inputs]
        raise ValueError(
            f"`unlabeled` holds {len(flat_arrays)} array(s), but the model takes "
            f"{len(flat_inputs)} input(s) ({', '.join(names)}). Pass one array "
            "per model input, in the order of the model's inputs."
        )
    return [(str(i), a, t) for i, (a, t) in enumerate(zip(flat_arrays, flat_inputs))]


def _embedding_inputs(model, layer, inputs):
    """Returns the model inputs that feed ``layer`` directly (by identity)."""
    fed = {id(t) for t in keras_internals.inbound_input_tensors(layer)}
    return [t for t in keras.tree.flatten(inputs) if id(t) in fed]


def check_against_model(sampler, model, layer, vocabulary):
    """Checks the unlabelled arrays against the model's inputs, at install time.

    Args:
        sampler: An `UnlabeledSampler` (nothing is checked without arrays).
        model: The model VAT is installed on.
        layer: The embedding layer VAT perturbs, or None.
        vocabulary: The number of rows of its matrix (None if unknown).

    Raises:
        ValueError: An array's example shape does not fit its model input, the
            number of arrays differs from the model's inputs, or token ids
            fall outside the vocabulary. The message names the array.
    """
    if sampler.arrays is None:
        return
    inputs = _model_inputs(model)
    if inputs is None:  # a subclassed model not called yet: nothing to compare
        return
    pairs = _pairs(sampler.arrays, inputs)
    for label, array, tensor in pairs:
        if not _fits(_shape(tensor), array.shape):
            raise ValueError(
                f"`unlabeled` array {label} has examples of shape "
                f"{array.shape[1:]}, but the model's input "
                f"{getattr(tensor, 'name', label)!r} takes batches of shape "
                f"{_shape(tensor)}. Pass unlabelled data shaped like the "
                "model's training inputs."
            )
    if layer is None or vocabulary is None:
        return
    fed = _embedding_inputs(model, layer, inputs)
    for label, array, tensor in pairs:
        if not any(tensor is t for t in fed):
            continue
        if not np.issubdtype(array.dtype, np.integer):
            continue
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= vocabulary:
            raise ValueError(
                f"`unlabeled` array {label} holds token ids from {low} to {high}, "
                f"but the embedding layer {layer.name!r} has {vocabulary} rows "
                f"(ids 0 to {vocabulary - 1}). Map unknown tokens to an id in "
                "range (e.g. the tokenizer's unknown-token id)."
            )
