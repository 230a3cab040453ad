"""Gradients of a model's loss on one fixed batch, computed eagerly.

Outside any training step (e.g. in a callback at the end of an epoch): the
model runs once in inference mode (``training=False``) on the batch, the loss
is the one ``fit`` trains on -- ``model.compute_loss`` (the compiled loss with
sample weights, plus ``model.losses``) -- and its gradient is taken with respect
to every trainable weight and to one of:

- the model's floating-point inputs, or
- the outputs of an embedding layer's lookups (the looked-up vectors, one per
  token occurrence; a layer called on several inputs gives one per call).

Per framework: a `tf.GradientTape` (Keras 3 on TensorFlow, and tf_keras);
``jax.grad`` of a function of the weights' values, the model called inside a
`keras.StatelessScope` that maps every variable (so that ``model.losses`` --
activity and weight regularisers -- are those of this pass, as in
``model.stateless_call``); ``torch.autograd.grad``. Nothing is written to the
model: no weight, no ``.grad``, no metric (the compiled loss's trackers are
kept quiet).
"""

import inspect
from typing import List, NamedTuple

import numpy as np

from keras_reg import backend
from keras_reg._compat import keras
from keras_reg.backend.base import is_lookup
from keras_reg.backend.interception import transformed_output


class LossGradients(NamedTuple):
    """Gradients of the loss, in the framework's own types.

    Attributes:
        targets: d loss / d each floating-point input (flattened with
            ``keras.tree``), or d loss / d each lookup output of the layer.
        weights: d loss / d each of ``model.trainable_variables``, in order
            (None, or zeros on JAX, for a weight the loss does not use; on
            TensorFlow an embedding matrix's is a `tf.IndexedSlices`).
    """

    targets: List
    weights: List


def float_leaves(x):
    """Returns the indices, in ``keras.tree.flatten(x)``, of the float arrays."""
    leaves = keras.tree.flatten(x)
    return [
        i
        for i, leaf in enumerate(leaves)
        if np.issubdtype(np.dtype(_dtype_name(leaf)), np.floating)
    ]


def _dtype_name(leaf):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return np.asarray(leaf).dtype
    return keras.backend.standardize_dtype(dtype)


def loss_gradients(model, x, y, sample_weight=None, layer=None):
    """Returns the `LossGradients` of the model's loss on one batch.

    Args:
        model: A built, compiled Keras 3 or tf_keras model.
        x: The batch's inputs (arrays, or a list/dict of arrays).
        y: The batch's targets.
        sample_weight: Per-example weights, or None.
        layer: A layer whose lookup outputs are the targets (`base.is_lookup`:
            one more axis out than in); None: the float leaves of ``x``.

    Returns:
        `LossGradients`.

    Raises:
        ValueError: ``layer`` made no lookup in the pass, or (``layer=None``)
            ``x`` has no floating-point array.
    """
    if layer is None and not float_leaves(x):
        raise ValueError(_NO_FLOAT_INPUTS)
    name = backend.framework(model)
    compute = {
        "tensorflow": _tensorflow,
        "tf_keras": _tensorflow,
        "jax": _jax,
        "torch": _torch,
    }.get(name)
    if compute is None:
        raise NotImplementedError(f"No eager gradients for the {name!r} backend.")
    targets, weights = compute(model, x, y, sample_weight, layer)
    if layer is not None and not targets:
        raise ValueError(
            f"Layer {layer.name!r} did not look anything up when model "
            f"{model.name!r} ran on the batch (no call mapping token ids to "
            "vectors), so there is no embedding output to differentiate. Is it "
            "the embedding layer the model's inputs go through?"
        )
    return LossGradients(list(targets), list(weights))


def global_norm(gradients):
    """Returns sqrt(sum of squares) over ``gradients`` as a Python float.

    None entries count as zero; a `tf.IndexedSlices` has its repeated rows
    summed first, so the result is the norm of the dense gradient. Sums are
    taken in float64 on the host.
    """
    total = 0.0
    for gradient in gradients:
        if gradient is None:
            continue
        values = _dense_values(gradient)
        total += float(np.sum(np.square(values.astype(np.float64))))
    return float(np.sqrt(total))


def _dense_values(gradient):
    """The values of a gradient whose squares sum to its dense squared norm."""
    if type(gradient).__name__ == "IndexedSlices":
        from keras_reg.backend.tensorflow import sum_repeated_rows

        gradient = sum_repeated_rows(gradient).values
    if hasattr(gradient, "detach"):  # torch
        gradient = gradient.detach().cpu()
    return np.asarray(keras.ops.convert_to_numpy(gradient))


def _loss(model, x, y, y_pred, sample_weight):
    """``model.compute_loss`` in inference mode, the loss trackers kept quiet."""
    kwargs = {}
    if backend.framework(model) != "tf_keras" and _accepts_training(model.compute_loss):
        kwargs["training"] = False
    with backend.for_model(model).quiet_loss_metrics(model):
        loss = model.compute_loss(x, y, y_pred, sample_weight, **kwargs)
    if loss is None:
        raise ValueError(
            f"Model {model.name!r} computed no loss on the batch (compiled "
            "without a loss, and no `model.losses`): there is nothing to "
            "differentiate."
        )
    return loss


def _accepts_training(function):
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == "training" or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )


def _as_floatx(leaf, convert, floatx):
    """Converts a float NumPy leaf to ``floatx`` (as ``fit`` does), else as is."""
    if isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.floating):
        return convert(leaf.astype(floatx))
    return convert(leaf) if isinstance(leaf, np.ndarray) else leaf


def _lookups(layer, make):
    """Makes each lookup of ``layer`` return ``make(output)`` inside the block."""

    def transform(output, inputs):
        return make(output) if is_lookup(output, inputs) else output

    return transformed_output(layer, transform)


def _inputs(x, convert, floatx):
    """Returns (flat leaves converted to tensors, positions of the float ones)."""
    leaves = [_as_floatx(leaf, convert, floatx) for leaf in keras.tree.flatten(x)]
    return leaves, float_leaves(leaves)


def _tensors(structure, convert, floatx):
    """Converts the NumPy leaves of targets or sample weights, as ``fit`` does."""
    if structure is None:
        return None
    return keras.tree.map_structure(
        lambda leaf: _as_floatx(leaf, convert, floatx), structure
    )


def _tensorflow(model, x, y, sample_weight, layer):
    import tensorflow as tf

    if backend.framework(model) == "tf_keras":
        import tf_keras

        floatx = tf_keras.backend.floatx()
    else:
        floatx = keras.config.floatx()
    leaves, positions = _inputs(x, tf.convert_to_tensor, floatx)
    inputs = keras.tree.pack_sequence_as(x, leaves)
    y = _tensors(y, tf.convert_to_tensor, floatx)
    sample_weight = _tensors(sample_weight, tf.convert_to_tensor, floatx)
    targets = []

    def watched(output):
        tape.watch(output)
        targets.append(output)
        return output

    with tf.GradientTape() as tape:
        if layer is None:
            for i in positions:
                watched(leaves[i])
            y_pred = model(inputs, training=False)
        else:
            with _lookups(layer, watched):
                y_pred = model(inputs, training=False)
        loss = _loss(model, inputs, y, y_pred, sample_weight)
    if not targets:
        return [], []
    gradients = tape.gradient(loss, targets + list(model.trainable_variables))
    return gradients[: len(targets)], gradients[len(targets) :]


def _torch(model, x, y, sample_weight, layer):
    import torch

    convert, floatx = keras.ops.convert_to_tensor, keras.config.floatx()
    leaves, positions = _inputs(x, convert, floatx)
    y = _tensors(y, convert, floatx)
    sample_weight = _tensors(sample_weight, convert, floatx)
    targets = []

    def shifted(output):
        # d loss / d (output + 0) = d loss / d output, also for a frozen
        # embedding, whose output does not require grad.
        zero = torch.zeros_like(output, requires_grad=True)
        targets.append(zero)
        return output + zero

    with torch.enable_grad():
        if layer is None:
            for i in positions:
                leaves[i] = leaves[i].detach().requires_grad_(True)
                targets.append(leaves[i])
            inputs = keras.tree.pack_sequence_as(x, leaves)
            y_pred = model(inputs, training=False)
        else:
            inputs = keras.tree.pack_sequence_as(x, leaves)
            with _lookups(layer, shifted):
                y_pred = model(inputs, training=False)
        loss = _loss(model, inputs, y, y_pred, sample_weight)
        if not targets:
            return [], []
        variables = [v.value for v in model.trainable_variables]
        gradients = torch.autograd.grad(loss, targets + variables, allow_unused=True)
    return list(gradients[: len(targets)]), list(gradients[len(targets) :])


def _jax(model, x, y, sample_weight, layer):
    import jax

    convert, floatx = keras.ops.convert_to_tensor, keras.config.floatx()
    leaves, positions = _inputs(x, convert, floatx)
    y = _tensors(y, convert, floatx)
    sample_weight = _tensors(sample_weight, convert, floatx)
    trainable = list(model.trainable_variables)
    # Every other variable the pass may read, at its current value (``fit``
    # has synced the trained state back into the variables at epoch end).
    fixed = [
        (v, v.value)
        for v in _unique(
            list(model.non_trainable_variables) + list(model.metrics_variables)
        )
    ]

    def loss_of(trainable_values, targets):
        flat = list(leaves)
        pending = list(targets)
        if layer is None:
            for i, target in zip(positions, targets):
                flat[i] = target
        inputs = keras.tree.pack_sequence_as(x, flat)
        mapping = list(zip(trainable, trainable_values)) + fixed
        # One scope around the pass and its loss: `model.losses` inside it are
        # this pass's (what `stateless_call(..., return_losses=True)` returns).
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            if layer is None:
                y_pred = model(inputs, training=False)
            else:
                with _lookups(layer, lambda output: output + pending.pop(0)):
                    y_pred = model(inputs, training=False)
            return _loss(model, inputs, y, y_pred, sample_weight)

    values = [v.value for v in trainable]
    if layer is None:
        targets = [leaves[i] for i in positions]
    else:
        # The lookups' shapes, from an abstract pass (nothing is computed).
        shapes = []

        def record(output):
            shapes.append(jax.ShapeDtypeStruct(output.shape, output.dtype))
            return output

        with _lookups(layer, record):
            jax.eval_shape(
                lambda: model(keras.tree.pack_sequence_as(x, leaves), training=False)
            )
        targets = [jax.numpy.zeros(s.shape, s.dtype) for s in shapes]
    if not targets:
        return [], []
    weight_gradients, target_gradients = jax.grad(loss_of, argnums=(0, 1))(
        values, targets
    )
    return list(target_gradients), list(weight_gradients)


def _unique(variables):
    seen, unique = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            unique.append(variable)
    return unique


_NO_FLOAT_INPUTS = (
    "The model's inputs have no floating-point array, so there is no input "
    "gradient to take: for token ids, pass the name of the embedding layer "
    "(e.g. embedding_name='Embedding-Token') to take the gradient with respect "
    "to the looked-up vectors instead."
)
