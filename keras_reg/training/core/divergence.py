"""What VAT measures: the KL divergence between two predictions of a model.

A model's output is read as one of two kinds:

- ``"probabilities"``: a softmax (or a single sigmoid unit): the KL is taken on
  the probabilities, clipped to ``[1e-7, 1]``;
- ``"logits"``: the pre-activation scores: the KL is taken stably with
  ``log_softmax`` (or ``log_sigmoid`` for a single unit).

A last axis of size 1 is a Bernoulli distribution (one sigmoid unit). The
kind is inferred from the loss the model was compiled with (see
`output_kind`), unless the user names it. Everything is computed in float32,
so a mixed-precision model (float16 / bfloat16 outputs) gives a float32 term.
A model with several outputs gets the sum of the per-output divergences (the
KL of the joint distribution of independent outputs).
"""

import collections.abc
import re
import warnings

from keras_reg._compat import keras
from keras_reg.training.core.output_activation import linear_outputs
from keras_reg.validation import has_loss

ops = keras.ops

KINDS = ("probabilities", "logits")
_TINY = 1e-7

# Losses whose targets are a distribution over classes (snake_case names, as in
# Keras 3 and tf_keras): probabilities, or logits with ``from_logits=True``.
_DISTRIBUTION_LOSSES = {
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
    "categorical_focal_crossentropy",
    "binary_focal_crossentropy",
    "kl_divergence",
    "kld",
    "kullback_leibler_divergence",
}
# Losses of outputs that are no distribution (regression, scores).
_OTHER_LOSSES = {
    "mean_squared_error",
    "mse",
    "mean_absolute_error",
    "mae",
    "mean_absolute_percentage_error",
    "mape",
    "mean_squared_logarithmic_error",
    "msle",
    "huber",
    "huber_loss",
    "log_cosh",
    "logcosh",
    "cosine_similarity",
    "poisson",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "ctc",
    "dice",
    "tversky",
    "circle",
}


def _float32(value):
    return value if value.dtype == "float32" else ops.cast(value, "float32")


def kl_divergence(p, q, kind="probabilities", axis=-1):
    """Returns the batch mean of KL(p || q), summed over a model's outputs.

    Args:
        p: The reference output (a tensor, or a structure of tensors for a
            multi-output model), held constant by the caller.
        q: The output to compare, shaped like ``p``.
        kind: ``"probabilities"`` or ``"logits"``: what the outputs are.
        axis: The class axis. A size of 1 is read as one sigmoid unit.

    Returns:
        A float32 scalar.
    """
    terms = [
        _kl(_float32(a), _float32(b), kind, axis)
        for a, b in zip(keras.tree.flatten(p), keras.tree.flatten(q))
    ]
    return terms[0] if len(terms) == 1 else sum(terms)


def symmetric_kl(p, q, kind="probabilities", axis=-1):
    """Returns the batch mean of KL(p || q) + KL(q || p), summed over outputs.

    Computed as ``sum (p - q) (log p - log q)`` (the same number), whose
    gradient is exactly 0 where p == q: two identical predictions (no
    dropout) leave the step exactly as it was without the term.

    Args:
        p: An output (or a structure of them); both sides are differentiated.
        q: The other output, shaped like ``p``.
        kind: ``"probabilities"`` or ``"logits"``.
        axis: The class axis. A size of 1 is read as one sigmoid unit.

    Returns:
        A float32 scalar.
    """
    terms = []
    for a, b in zip(keras.tree.flatten(p), keras.tree.flatten(q)):
        log_a = log_probabilities(a, kind, axis)
        log_b = log_probabilities(b, kind, axis)
        difference = ops.exp(log_a) - ops.exp(log_b)
        terms.append(ops.mean(ops.sum(difference * (log_a - log_b), axis=axis)))
    return terms[0] if len(terms) == 1 else sum(terms)


def _kl(p, q, kind, axis):
    if kind == "logits":
        log_p, log_q = _log_probabilities(p, axis), _log_probabilities(q, axis)
        return ops.mean(ops.sum(ops.exp(log_p) * (log_p - log_q), axis=axis))
    if p.shape[axis] == 1:
        p = ops.concatenate([1.0 - p, p], axis=axis)
        q = ops.concatenate([1.0 - q, q], axis=axis)
    p = ops.clip(p, _TINY, 1.0)
    q = ops.clip(q, _TINY, 1.0)
    return ops.mean(ops.sum(p * (ops.log(p) - ops.log(q)), axis=axis))


def _log_probabilities(logits, axis):
    """Returns log-probabilities: log_softmax, or [log(1 - s), log(s)] for one unit."""
    if logits.shape[axis] == 1:
        return ops.concatenate(
            [ops.log_sigmoid(-logits), ops.log_sigmoid(logits)], axis=axis
        )
    return ops.log_softmax(logits, axis=axis)


def entropy(p, kind="probabilities", axis=-1):
    """Returns the batch mean of the entropy of ``p``, summed over outputs.

    Args:
        p: A model output (or a structure of them).
        kind: ``"probabilities"`` or ``"logits"``.
        axis: The class axis. A size of 1 is read as one sigmoid unit.

    Returns:
        A float32 scalar.
    """
    terms = [_entropy(_float32(a), kind, axis) for a in keras.tree.flatten(p)]
    return terms[0] if len(terms) == 1 else sum(terms)


def _entropy(p, kind, axis):
    if kind == "logits":
        log_p = _log_probabilities(p, axis)
        return -ops.mean(ops.sum(ops.exp(log_p) * log_p, axis=axis))
    if p.shape[axis] == 1:
        p = ops.concatenate([1.0 - p, p], axis=axis)
    return -ops.mean(ops.sum(p * ops.log(ops.clip(p, _TINY, 1.0)), axis=axis))


def _snake_case(name):
    """``"KLDivergence"`` -> ``"kl_divergence"``; snake_case names are unchanged."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _describe(loss):
    """Returns (snake_case name, from_logits) of one compiled loss, or (None, False)."""
    if isinstance(loss, str):
        return _snake_case(loss), False
    config = {}
    get_config = getattr(loss, "get_config", None)
    if callable(get_config) and not isinstance(loss, type):
        try:
            config = get_config() or {}
        except (NotImplementedError, TypeError, ValueError):
            config = {}
    from_logits = bool(config.get("from_logits", False))
    if isinstance(loss, keras.losses.Loss) or hasattr(loss, "reduction"):
        # A loss object: its class (Keras 3, tf_keras), else its function.
        name = _snake_case(type(loss).__name__)
        if name == "flooding":  # keras_reg.losses.Flooding: the loss it wraps
            return _describe(loss.loss)
        if name not in _DISTRIBUTION_LOSSES | _OTHER_LOSSES:
            name = getattr(getattr(loss, "fn", None), "__name__", name)
        return name, from_logits
    return getattr(loss, "__name__", None), from_logits


def _label(loss):
    """A short, readable name of one compiled loss for messages."""
    if isinstance(loss, str):
        return repr(loss)
    name, from_logits = _describe(loss)
    name = name or type(loss).__name__
    return f"{name}(from_logits=True)" if from_logits else name


def _one_kind(loss):
    """Returns "probabilities", "logits", "other" or None (unknown) for one loss."""
    name, from_logits = _describe(loss)
    if name in _DISTRIBUTION_LOSSES:
        return "logits" if from_logits else "probabilities"
    if name in _OTHER_LOSSES:
        return "other"
    return None


def _flat_losses(loss):
    if isinstance(loss, collections.abc.Mapping):
        return [v for v in loss.values() if v is not None]
    if isinstance(loss, collections.abc.Sequence) and not isinstance(loss, str):
        return [v for v in loss if v is not None]
    return [loss]


def output_kind(model, kind=None, warn=True, who="VAT"):
    """Returns what ``model``'s outputs are: ``"probabilities"`` or ``"logits"``.

    Args:
        model: A compiled Keras 3 or tf_keras model.
        kind: The user's choice (returned as is), or None to infer it from the
            compiled loss: the cross-entropy losses (classes, functions or
            names; ``CategoricalCrossentropy``, ``SparseCategoricalCrossentropy``,
            ``BinaryCrossentropy``, their focal variants, ``KLDivergence``)
            mean probabilities, or logits with ``from_logits=True``. A model
            compiled without a loss (the source's unlabelled-only set-up)
            gets probabilities, as does an unrecognised loss (with a warning).
            Where a functional or Sequential model's output layers have a
            linear activation, probabilities are refused without a loss (the
            term would train nothing) and warned about with one.
        warn: Warn when the loss is not recognised.
        who: The regulariser's name, for messages.

    Returns:
        ``"probabilities"`` or ``"logits"``.

    Raises:
        ValueError: The loss is a regression (or score) loss such as ``"mse"``,
            whose output is no distribution for a KL; or the outputs of a
            multi-output model mix logits and probabilities.
    """
    if kind is not None:
        return kind
    loss = getattr(model, "loss", None)
    if not has_loss(model):
        linear = linear_outputs(model) if warn else []
        if linear:
            raise ValueError(
                f"Model {model.name!r} was compiled without a loss, so {who} "
                "reads its outputs as class probabilities, but its output "
                f"layer(s) {', '.join(map(repr, linear))} have a linear "
                f"activation (logits, or a regression output): the {who} term "
                "would be about 0 and train nothing. For class logits pass "
                "predictions='logits'; for probabilities end the model with a "
                "softmax."
            )
        return "probabilities"
    losses = _flat_losses(loss)
    kinds = [_one_kind(one) for one in losses]
    others = [one for one, k in zip(losses, kinds) if k == "other"]
    if others:
        raise ValueError(
            f"{who} measures how much the model's predicted distribution changes "
            f"(a KL divergence), but model {model.name!r} is compiled with the "
            f"regression/score loss {_label(others[0])}, whose output is not a "
            "distribution: there is no KL to take. If the output is in fact "
            "class probabilities or logits, say so with "
            "predictions='probabilities' or predictions='logits'."
        )
    known = set(k for k in kinds if k is not None)
    if len(known) > 1:
        labels = ", ".join(_label(one) for one in losses)
        raise ValueError(
            f"The outputs of model {model.name!r} mix probabilities and logits "
            f"(compiled losses: {labels}); {who} sums one kind of KL over all "
            "outputs. Compile every output with the same `from_logits`, or pass "
            "predictions='probabilities' or predictions='logits' if that "
            "describes every output."
        )
    if None in kinds:
        if not warn:
            return known.pop() if known else "probabilities"
        unknown = losses[kinds.index(None)]
        chosen = known.pop() if known else "probabilities"
        warnings.warn(
            f"{who} cannot tell from the loss {_label(unknown)} whether model "
            f"{model.name!r} outputs probabilities or logits; it assumes "
            f"{chosen}. On logits read as probabilities the {who} term is about "
            "0. Pass predictions='logits' or predictions='probabilities' to "
            "say which.",
            stacklevel=4,
        )
        return chosen
    chosen = known.pop()
    linear = linear_outputs(model) if warn and chosen == "probabilities" else []
    if linear:
        warnings.warn(
            f"Model {model.name!r} is compiled with a loss that reads its "
            f"outputs as probabilities (from_logits=False), but its output "
            f"layer(s) {', '.join(map(repr, linear))} have a linear activation: "
            f"they look like logits, and {who}'s KL of non-probabilities is "
            "meaningless. Compile the loss with from_logits=True, pass "
            "predictions='logits', or end the model with a softmax.",
            stacklevel=4,
        )
    return chosen


def loss_family(model):
    """Returns the family of a single-output model's compiled loss, or None.

    ``"probabilities"`` / ``"logits"`` for the cross-entropy losses (see
    `output_kind`), ``"squared_error"`` for mean squared error, None for any
    other loss, a model compiled without one, or several outputs.
    """
    losses = _flat_losses(getattr(model, "loss", None))
    if len(losses) != 1 or losses[0] is None:
        return None
    kind = _one_kind(losses[0])
    if kind in KINDS:
        return kind
    name, _ = _describe(losses[0])
    if name in ("mse", "mean_squared_error"):
        return "squared_error"
    return None


def loss_name(model):
    """Returns the snake_case name of a single-output model's loss, or None."""
    losses = _flat_losses(getattr(model, "loss", None))
    if len(losses) != 1 or losses[0] is None:
        return None
    return _describe(losses[0])[0]


def log_probabilities(y_pred, kind, axis=-1):
    """Returns the float32 log-probabilities of the classes of ``y_pred``.

    A single unit is a Bernoulli: its two classes are [1 - p, p].

    Args:
        y_pred: Probabilities or logits.
        kind: ``"probabilities"`` or ``"logits"``.
        axis: The class axis.
    """
    y_pred = _float32(y_pred)
    if kind == "logits":
        return _log_probabilities(y_pred, axis)
    if y_pred.shape[axis] == 1:
        y_pred = ops.concatenate([1.0 - y_pred, y_pred], axis=axis)
    return ops.log(ops.clip(y_pred, 1e-7, 1.0))
