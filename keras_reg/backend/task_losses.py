"""The per-output ("task") losses of a compiled multi-output model.

Keras 3 keeps the compiled loss in a ``CompileLoss``, tf_keras in
``model.compiled_loss`` (a ``LossesContainer``). Both compute every
output's loss with its sample weights (and masks), hand the *unweighted* value
to that output's ``Mean`` tracker -- the ``<output>_loss`` that ``fit`` logs --
and only then multiply by the output's ``loss_weights``. `task_losses` calls the
compiled loss and records the values handed to the trackers (the trackers
themselves stay quiet), so the task losses are Keras's own, computed exactly as
``fit`` logs them: structure matching of ``y`` and ``y_pred``, sample weights,
masks, dtypes.

Its user is `keras_reg.training.multitask.balancing`. The per-output losses
exist only in private attributes of both frameworks, read through
`keras_reg.backend.keras_internals`.
"""

from typing import NamedTuple

import numpy as np

from keras_reg import backend
from keras_reg._compat import keras
from keras_reg.backend import keras_internals, tracking

_CLASSIFICATION = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "categorical",
    "categorical_focal_crossentropy": "categorical",
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
}


class Tasks(NamedTuple):
    """The task losses of one batch, in the compiled loss's order.

    Attributes:
        names: Output names (``'cls'`` for the ``cls_loss`` log).
        values: The unweighted per-output losses (scalar tensors).
        weights: The outputs' compiled ``loss_weights`` (1.0 where none).
    """

    names: list
    values: list
    weights: list


def _legacy(model):
    return backend.framework(model) == "tf_keras"


def compiled_loss(model):
    """Returns the model's compiled-loss object, or None if compiled without one."""
    if _legacy(model):
        return getattr(model, "compiled_loss", None)
    return keras_internals.compile_loss(model)


def _built_tasks(model):
    """Returns ``[(name, loss_object, weight, tracker)]`` once the loss is built."""
    container = compiled_loss(model)
    if container is None or not container.built:
        return None
    if _legacy(model):
        names, losses, weights, trackers = keras_internals.tf_keras_loss_table(
            container
        )
        count = len(losses)
        weights = list(weights or [])
        if len(weights) != count:
            weights = [None] * count
        trackers = list(trackers or [None] * count)
        rows = zip(names, losses, weights, trackers)
        return [
            (name, loss, 1.0 if weight is None else weight, tracker)
            for name, loss, weight, tracker in rows
            if loss is not None
        ]
    entries = keras_internals.compile_loss_entries(container)
    trackers = list(container.metrics) or [None] * len(entries)
    return [
        (name, loss, 1.0 if weight is None else weight, tracker)
        for (name, loss, weight), tracker in zip(entries, trackers)
    ]


def declared_tasks(model):
    """Returns the names of the outputs that have a compiled loss, or None.

    From the built compiled loss when the model has computed a loss before;
    otherwise from the ``loss`` argument of ``compile`` and the model's output
    names (None when neither tells: a subclassed model that never ran).
    """
    built = _built_tasks(model)
    if built is not None:
        return [name for name, *_ in built]
    spec = getattr(model, "loss", None)
    if isinstance(spec, dict):
        return [name for name, loss in spec.items() if loss is not None]
    names = _output_names(model)
    if names is None:
        return None
    if isinstance(spec, (list, tuple)):
        return [name for name, loss in zip(names, spec) if loss is not None]
    return list(names)


def _output_names(model):
    try:
        names = model.output_names
    except (AttributeError, ValueError):
        return None
    return list(names) if names else None


def task_losses(model, y, y_pred, sample_weight):
    """Returns the step's `Tasks`: each output's loss as the compiled loss computes it.

    Args:
        model: A compiled model whose compiled loss has been built (it is, inside
            a train step, by the step's own loss).
        y: Targets, as passed to ``compute_loss``.
        y_pred: The model's outputs.
        sample_weight: Sample weights, or None.
    """
    container = compiled_loss(model)
    built = _built_tasks(model)
    if built is None:
        raise RuntimeError(
            "keras_reg: the compiled loss is not built yet; per-output losses are "
            "read inside a training step, after the model's own loss."
        )
    trackers = [tracker for *_, tracker in built]
    if any(tracker is None for tracker in trackers):
        # A single output: there is nothing to balance (the caller says so).
        return Tasks([name for name, *_ in built], [], [])
    record = {}
    with _recording(list(container.metrics), record):
        container(y, y_pred, sample_weight)
    values = [record[id(tracker)] for tracker in trackers]
    return Tasks(
        [name for name, *_ in built], values, [weight for _, _, weight, _ in built]
    )


def _recording(metrics, record):
    """Records, instead of applying, the ``update_state`` values of ``metrics``."""

    def recorder(metric):
        def update_state(value, *args, **kwargs):
            del args, kwargs
            record[id(metric)] = value

        return update_state

    return tracking.updates_replaced(metrics, recorder)


def added_losses(model):
    """Returns the model's added losses (``model.losses``) as the framework sums them.

    Layer regularisation and ``add_loss`` terms, scaled for replicas where the
    framework scales them; 0.0 when there are none.
    """
    losses = list(model.losses)
    if not losses:
        return 0.0
    if _legacy(model):
        return keras_internals.tf_keras_sum_added_losses(losses)
    total = 0.0
    for loss in losses:
        total = total + keras_internals.aggregate_added_loss(model, loss)
    return total


def scale_for_replicas(model, loss):
    """Returns ``loss / replicas`` under a TF distribution strategy, as Keras scales."""
    if _legacy(model):
        return keras_internals.tf_keras_scale_loss_for_distribution(loss)
    return keras_internals.scale_loss_for_distribution(loss)


# ---- the prior: the loss of predicting the label statistics -----------------------
def task_loss_functions(model):
    """Returns ``[(name, loss)]``: each output's loss object or function.

    From the built compiled loss if there is one, else resolved from the
    ``loss`` argument of ``compile`` (a dict by output name, a list in output
    order, or one loss for every output).

    Raises:
        ValueError: The outputs cannot be matched with their losses.
    """
    built = _built_tasks(model)
    if built is not None:
        return [(name, loss) for name, loss, *_ in built]
    spec = model.loss
    names = declared_tasks(model)
    if names is None:
        raise ValueError(
            f"Cannot tell which loss belongs to which output of model "
            f"{model.name!r} before it has run: compile it with a dict "
            "`loss={'output_name': loss, ...}`, or fit or evaluate it once first."
        )
    get = _losses_module(model).get
    if isinstance(spec, dict):
        return [(name, get(spec[name])) for name in names]
    if isinstance(spec, (list, tuple)):
        pairs = zip(_output_names(model), spec)
        return [(name, get(loss)) for name, loss in pairs if loss is not None]
    return [(name, get(spec)) for name in names]


def _losses_module(model):
    if _legacy(model):
        import tf_keras

        return tf_keras.losses
    return keras.losses


def prior_loss(model, loss, y, sample_weight=None):
    """Returns the loss of the constant prediction given by the label statistics.

    For a cross-entropy (sparse, categorical, binary; focal variants) the
    prediction is the (sample-weighted) label frequencies -- as logits where
    the loss takes logits; for any other loss, the (sample-weighted) mean
    target. So the prior loss of a classification head is the entropy of its
    label distribution, and that of a mean-squared-error head the variance of
    its targets (averaged over the output's units, as Keras averages).

    Args:
        model: The model (to know its framework).
        loss: The output's loss object or function.
        y: The output's targets, a NumPy array (first axis: examples).
        sample_weight: Optional per-example weights.

    Returns:
        A Python float.
    """
    y = np.asarray(y)
    weights = None if sample_weight is None else np.asarray(sample_weight, "float64")
    kind, from_logits = _loss_kind(loss)
    tiny = 1e-7

    def mean(values):
        values = np.asarray(values, "float64")
        if weights is None:
            return values.mean(axis=0)
        shaped = weights.reshape((-1,) + (1,) * (values.ndim - 1))
        return (values * shaped).sum(axis=0) / weights.sum()

    if kind == "sparse":
        labels = y.reshape(len(y), -1)[:, 0].astype("int64")
        prior = mean(np.eye(int(labels.max()) + 1)[labels])
        prediction = np.log(np.maximum(prior, tiny)) if from_logits else prior
        shape = (len(y), prior.shape[-1])
    else:
        prior = mean(y.astype("float64"))
        prediction = prior
        if kind == "categorical" and from_logits:
            prediction = np.log(np.maximum(prior, tiny))
        elif kind == "binary" and from_logits:
            clipped = np.clip(prior, tiny, 1 - tiny)
            prediction = np.log(clipped / (1 - clipped))
        shape = y.shape
    prediction = np.broadcast_to(prediction, shape).astype("float32")
    y_true = y if kind == "sparse" else y.astype("float32")
    return _mean_loss(model, loss, y_true, prediction, weights)


def _loss_kind(loss):
    """Returns ``(kind, from_logits)``; kind is None for a regression loss."""
    function = getattr(loss, "fn", loss)
    name = getattr(function, "__name__", type(loss).__name__)
    options = keras_internals.loss_function_options(loss)
    from_logits = options.get("from_logits", getattr(loss, "from_logits", False))
    return _CLASSIFICATION.get(name), bool(from_logits)


def _mean_loss(model, loss, y_true, y_pred, sample_weight):
    """Returns the loss reduced as Keras reduces it (sum over batch size)."""
    if isinstance(loss, _losses_module(model).Loss):
        value = loss(y_true, y_pred, sample_weight=sample_weight)
        return float(keras.ops.convert_to_numpy(value))
    values = np.asarray(keras.ops.convert_to_numpy(loss(y_true, y_pred)), "float64")
    if sample_weight is not None:
        values = values * sample_weight.reshape((-1,) + (1,) * (values.ndim - 1))
    return float(values.sum() / values.size)


def targets_of(y, name, model):
    """Returns the targets of output ``name`` from ``y`` as passed to ``fit``."""
    if isinstance(y, dict):
        if name not in y:
            raise ValueError(f"`y` has no targets for output {name!r}: {sorted(y)}.")
        return y[name]
    if isinstance(y, (list, tuple)):
        names = _output_names(model) or []
        if len(y) != len(names) or name not in names:
            raise ValueError(
                f"`y` has {len(y)} arrays but model {model.name!r} has "
                f"{len(names) or 'unknown'} named outputs ({names}); pass a dict "
                "by output name."
            )
        return y[names.index(name)]
    raise ValueError(
        "`y` must hold one array per output (a list in output order, or a dict "
        f"by output name), received {type(y).__name__}."
    )


def weights_of(sample_weight, name):
    """Returns the sample weights of output ``name`` (one array serves all)."""
    if isinstance(sample_weight, dict):
        return sample_weight.get(name)
    return sample_weight
