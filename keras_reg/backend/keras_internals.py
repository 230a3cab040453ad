"""Every private Keras 3 and tf_keras attribute that keras_reg reads, in one place.

keras_reg regularises a model that Keras compiled and trains; a few things it
needs exist only inside Keras: the per-output losses of the compiled loss, the
list that pins ``model.losses`` during a JAX step, the layer tracker, the
scope that maps variables to values. Each read is one function here. Its
docstring says what it reads, which Keras (or tf_keras) versions have it
(checked in the released wheels), and which public alternative was weighed.

When the attribute is missing, the function raises a `RuntimeError` naming it
and the installed version, unless its docstring describes a fallback (for a
Keras version that predates the attribute, or a check that can be skipped).
``tests/test_keras_internals.py`` and its tf_keras counterpart run every
function on a small compiled model, so a Keras release that removes one fails
there with that message; no other keras_reg module reads a Keras private.
"""

import contextlib
import importlib

from keras_reg._compat import keras

# The JAX trainer's forward-and-loss method, which the installer wraps.
JAX_FORWARD = "compute_loss_and_updates"


def keras_version():
    """Returns ``'Keras 3.15.1'``: the installed Keras 3, for error messages."""
    return f"Keras {keras.__version__}"


def tf_keras_version():
    """Returns ``'tf_keras 2.21.0'``: the installed tf_keras, for error messages."""
    import tf_keras

    return f"tf_keras {tf_keras.__version__}"


def missing(what, version, purpose):
    """Returns the `RuntimeError` raised when a Keras internal is missing.

    Args:
        what: The attribute or module, e.g. ``'Trainer._compile_loss'``.
        version: `keras_version()` or `tf_keras_version()`.
        purpose: What keras_reg reads it for.
    """
    return RuntimeError(
        f"keras_reg needs {what} ({purpose}); {version} does not have it. "
        "Install a Keras version that keras_reg supports (see its requirements)."
    )


def _read(obj, attribute, owner, version, purpose):
    try:
        return getattr(obj, attribute)
    except AttributeError:
        raise missing(f"{owner}.{attribute}", version, purpose) from None


def _keras_src(module, name, purpose):
    try:
        return getattr(importlib.import_module(f"keras.src.{module}"), name)
    except (ImportError, AttributeError):
        raise missing(f"keras.src.{module}.{name}", keras_version(), purpose) from None


def _tf_keras_losses_utils():
    try:
        return importlib.import_module("tf_keras.src.utils.losses_utils")
    except ImportError:
        raise missing(
            "tf_keras.src.utils.losses_utils",
            tf_keras_version(),
            "to sum and scale added losses as tf_keras does",
        ) from None


# ---- Keras 3: variables and scopes ------------------------------------------------
def in_stateless_scope():
    """Returns whether a `keras.StatelessScope` is active.

    Reads ``keras.src.backend.common.stateless_scope.in_stateless_scope``
    (Keras 3.0-3.15). Public alternative: none; `keras.StatelessScope` is
    public, but not the question whether one is active.
    """
    return _keras_src(
        "backend.common.stateless_scope", "in_stateless_scope",
        "to tell a scope's variable reads from plain ones",
    )()


def stateless_scope_value(variable):
    """Returns ``variable``'s value in the active `keras.StatelessScope`, else None.

    None also when the scope does not map the variable. Reads
    ``keras.src.backend.common.stateless_scope.get_stateless_scope``
    (Keras 3.0-3.15). Public alternative: ``variable.value`` returns the
    variable's own value when the scope does not map it (under JAX ``fit``,
    a purged placeholder), so it cannot tell the two apart.
    """
    if not in_stateless_scope():
        return None
    scope = _keras_src(
        "backend.common.stateless_scope", "get_stateless_scope",
        "to read a variable's value in the enclosing scope",
    )()
    return scope.get_current_value(variable)


@contextlib.contextmanager
def own_pass_losses(model):
    """Makes ``model.losses`` report the losses added in the block.

    Keras's JAX trainer pins ``model.losses`` to the losses of its own forward
    pass while ``compute_loss`` runs, in ``Layer._losses_override`` (Keras
    3.2-3.15); an extra pass inside ``compute_loss`` must report its own (an
    embeddings regulariser's value at ``E + delta``, activity regularisers of
    the perturbed activations). The block empties the pinned list and puts it
    back.
    Fallback: without the attribute (Keras 3.0 and 3.1 pin nothing) or with
    nothing pinned, the block changes nothing. Public alternative: none.
    """
    pinned = getattr(model, "_losses_override", None)
    if pinned:
        model._losses_override = []
    try:
        yield
    finally:
        if pinned:
            model._losses_override = pinned


# ---- Keras 3: the layer tracker ---------------------------------------------------
def _tracker(model):
    return _read(
        model, "_tracker", "Layer", keras_version(),
        "to add a metric to, or remove it from, a built model",
    )


@contextlib.contextmanager
def tracker_unlocked(model):
    """Lets a built Keras 3 ``model`` track a new attribute inside the block.

    A built layer locks ``Layer._tracker`` (Keras 3.0-3.15; ``unlock``
    since 3.1) against new state; a metric attached to log a regulariser's
    term is not model state. Fallback: a tracker that is not locked (or has
    no lock) is left alone. Public alternative: attaching before ``build``,
    which an installer on a trained model cannot do.
    """
    tracker = _tracker(model)
    locked = getattr(tracker, "locked", False)
    if locked:
        tracker.unlock()
    try:
        yield
    finally:
        if locked:
            tracker.lock()


def untrack(model, value):
    """Removes ``value`` from ``model``'s tracked metrics (``Layer._tracker``).

    Keras 3.0-3.15. Public alternative: deleting the attribute leaves the
    metric in ``model.metrics``.
    """
    _tracker(model).untrack(value)


# ---- Keras 3: the compiled loss ---------------------------------------------------
def compile_loss(model):
    """Returns Keras 3's compiled loss (``Trainer._compile_loss``), or None.

    None when the model was compiled without a loss (or never compiled).
    Keras 3.0-3.15 (3.0 sets it in ``compile``). Public alternative:
    ``model.loss`` is the argument given to ``compile``, not the built
    container that holds each output's loss and ``<output>_loss`` tracker.
    """
    if not hasattr(model, "_compile_loss") and not getattr(model, "compiled", True):
        return None
    return _read(
        model, "_compile_loss", "Trainer", keras_version(),
        "to read each output's loss and its tracker",
    )


def compile_loss_entries(container):
    """Returns ``[(name, loss, loss_weight)]`` of a built Keras 3 compiled loss.

    Reads ``CompileLoss._flat_losses`` (Keras 3.7-3.15), whose entries are
    ``CompileLoss.Loss(path, loss, loss_weights, name)``; ``loss_weight`` is
    None where ``compile`` gave none. Public alternative: none; the
    ``<output>_loss`` trackers (``container.metrics``) do not say which loss
    they track.
    """
    entries = _read(
        container, "_flat_losses", "CompileLoss", keras_version(),
        "to match each output's loss with its tracker",
    )
    return [(entry.name, entry.loss, entry.loss_weights) for entry in entries]


def aggregate_added_loss(model, loss):
    """Returns one added loss as Keras 3's ``compute_loss`` sums it.

    Calls ``Trainer._aggregate_additional_loss`` (Keras 3.8-3.15): the sum of
    the tensor, cast to ``floatx`` when it is not a float. Public
    alternative: ``keras.ops.sum``, rejected to follow a model that
    overrides the method (and any change Keras makes to it).
    """
    return _read(
        model, "_aggregate_additional_loss", "Trainer", keras_version(),
        "to sum the model's added losses as compute_loss does",
    )(loss)


def scale_loss_for_distribution(loss):
    """Returns ``loss`` divided by the replicas, as Keras 3 scales a loss.

    Calls ``keras.src.losses.loss.scale_loss_for_distribution`` (Keras
    3.8-3.15): a no-op outside a TensorFlow distribution strategy. Public
    alternative: ``tf.nn.scale_regularization_loss``, TensorFlow-only.
    """
    return _keras_src(
        "losses.loss", "scale_loss_for_distribution",
        "to scale a loss for the replicas as Keras does",
    )(loss)


def tf_stateless_seed(seed):
    """Returns the int32 ``(2,)`` seed Keras 3's TensorFlow ops draw from ``seed``.

    What ``keras.random.normal(shape, seed=seed)`` passes to
    ``tf.random.stateless_normal`` (Keras 3.12-3.15: ``draw_seed``, which
    advances a ``SeedGenerator``, then ``_cast_seed``), for a draw that
    names its own algorithm (see `keras_reg.backend.tensorflow.Step.normal`).
    No public alternative: ``SeedGenerator.next`` gives the int64 state.
    """
    draw = _keras_src(
        "random.seed_generator", "draw_seed", "to draw a seed as Keras does"
    )
    cast = _keras_src(
        "backend.tensorflow.random", "_cast_seed", "to draw a seed as Keras does"
    )
    return cast(draw(seed))


def jax_aux_with_output(aux, output):
    """Returns the JAX trainer's forward-pass aux with ``y_pred`` replaced.

    ``compute_loss_and_updates`` (`JAX_FORWARD`) returns ``(loss, aux)`` with
    ``aux = (unscaled_loss, y_pred, non_trainable_variables,
    metrics_variables)`` in Keras 3.2-3.15; the trainer computes the metrics
    from that ``y_pred``. Fallback: any other layout (Keras 3.0 and 3.1 have
    three entries) returns None, and the caller keeps the trainer's own aux.
    Public alternative: none; the layout is the trainer's private contract.
    """
    if not isinstance(aux, tuple) or len(aux) != 4:
        return None
    unscaled_loss, _, non_trainable, metrics = aux
    return (unscaled_loss, output, non_trainable, metrics)


# ---- Keras 3 and tf_keras: layers and losses ---------------------------------------
def sublayers(layer, recursive=True):
    """Returns the layers inside ``layer`` (nested models and sublayers too).

    Calls ``Layer._flatten_layers(include_self=False, recursive=...)``
    (Keras 3.0-3.15, tf_keras 2.15-2.21), which also finds layers held as
    attributes of a custom layer. Fallback: without it, walks the public
    ``layers`` lists (models only). Public alternative: ``model.layers``
    (direct children of a model only); ``tf.Module.submodules`` is
    TensorFlow-only.
    """
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=recursive))
    found = []
    for child in getattr(layer, "layers", []):
        found.append(child)
        if recursive:
            found.extend(sublayers(child))
    return found


def inbound_input_tensors(layer):
    """Returns the symbolic tensors fed to ``layer`` in the functional models it is in.

    Reads ``Layer._inbound_nodes`` and each node's ``input_tensors`` (Keras
    3.0-3.15, tf_keras 2.15-2.21). Fallback: without them, returns ``[]``
    (the caller's input check then has nothing to check). Public
    alternative: ``layer.input``, which raises for a layer called more than
    once (a shared embedding).
    """
    fed = []
    for node in getattr(layer, "_inbound_nodes", None) or []:
        tensors = node.input_tensors
        if tensors is not None:  # never `or`: symbolic tensors have no truth
            fed.extend(keras.tree.flatten(tensors))
    return fed


def producing_layer(tensor):
    """Returns ``(layer, node_index)`` of the call that made a symbolic tensor.

    Reads ``KerasTensor._keras_history`` (Keras 3.0-3.15; tf_keras 2.15-2.21
    keeps the same attribute on its symbolic tensors). Fallback: None for a
    tensor without it (an eager value, a subclassed model's output), and the
    caller then has no graph to walk. Public alternative: none; a functional
    model's ``operations`` list the layers, not which one made a tensor.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    return history[0], history[1]


def node_input_tensors(layer, node_index):
    """Returns the symbolic tensors fed to ``layer``'s call ``node_index``.

    Reads ``Layer._inbound_nodes`` and the node's ``input_tensors`` (Keras
    3.0-3.15, tf_keras 2.15-2.21; ``keras_inputs`` in older tf_keras).
    Fallback: ``[]`` when the node is not there. Public alternative:
    ``layer.input``, which raises for a layer called more than once.
    """
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if node_index >= len(nodes):
        return []
    node = nodes[node_index]
    inputs = getattr(node, "input_tensors", None)
    if inputs is None:
        inputs = getattr(node, "keras_inputs", [])
    return leaves(inputs)


def leaves(structure):
    """The leaves of nested lists, tuples and dicts (Keras 3 or tf_keras).

    tf_keras's symbolic structures are not always ``keras.tree`` structures,
    so the graph walks here and in ``training/`` flatten with this.
    """
    if isinstance(structure, dict):
        structure = list(structure.values())
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in leaves(item)]
    return [structure]


def loss_function_options(loss):
    """Returns the keyword arguments a ``LossFunctionWrapper`` passes its function.

    Reads ``LossFunctionWrapper._fn_kwargs`` (Keras 3.0-3.15, tf_keras
    2.15-2.21), e.g. ``{'from_logits': True}``. Fallback: ``{}`` for any
    other loss (the caller then reads ``loss.from_logits``). Public
    alternative: ``get_config()``, which mixes them with the name, reduction
    and dtype, and may be unimplemented by a user's loss.
    """
    return getattr(loss, "_fn_kwargs", None) or {}


# ---- tf_keras ----------------------------------------------------------------------
def tf_keras_metric_list(model):
    """Returns the tf_keras model's own metric list (``Layer._metrics``).

    tf_keras 2.15-2.21; ``model.metrics`` (hence ``fit``'s logs and resets)
    reads it, and the caller appends to it or removes from it. Public
    alternative: ``add_metric`` takes a tensor, not a metric object; a metric
    set as an attribute becomes a sublayer whose variables join the weights.
    """
    return _read(
        model, "_metrics", "Layer", tf_keras_version(),
        "to attach a metric that fit logs and resets",
    )


def tf_keras_total_loss_tracker(model):
    """Returns the ``loss`` tracker of a tf_keras compiled loss, or None.

    Reads ``LossesContainer._total_loss_mean`` (tf_keras 2.15-2.21); None when
    the model has no compiled loss. Public alternative: ``model.metrics[0]``
    only once the metrics are built, and by position rather than identity.
    """
    container = getattr(model, "compiled_loss", None)
    if container is None:
        return None
    return _read(
        container, "_total_loss_mean", "LossesContainer", tf_keras_version(),
        "to report the optimized loss in fit's logs",
    )


def tf_keras_loss_table(container):
    """Returns a built tf_keras compiled loss's ``(names, losses, weights, trackers)``.

    Reads ``LossesContainer._output_names``, ``_losses``, ``_loss_weights``
    and ``_per_output_metrics`` (tf_keras 2.15-2.21): one entry per output
    (a loss None where the output has none; ``weights`` and ``trackers`` may
    be None or empty). Public alternative: none; ``container.metrics`` lists
    the trackers without the losses.
    """
    version = tf_keras_version()
    purpose = "to read each output's loss and its tracker"

    def read(attribute):
        return _read(container, attribute, "LossesContainer", version, purpose)

    return (
        read("_output_names"),
        read("_losses"),
        read("_loss_weights"),
        read("_per_output_metrics"),
    )


def tf_keras_sum_added_losses(losses):
    """Returns the sum of tf_keras added losses, cast and scaled as tf_keras does.

    Calls ``losses_utils.cast_losses_to_common_dtype`` and
    ``scale_loss_for_distribution`` from ``tf_keras.src.utils`` (tf_keras
    2.15-2.21). Public alternative: ``tf.add_n`` with
    ``tf.nn.scale_regularization_loss``, rejected to keep tf_keras's own dtype
    rules.
    """
    import tensorflow as tf

    utils = _tf_keras_losses_utils()
    losses = utils.cast_losses_to_common_dtype(losses)
    return utils.scale_loss_for_distribution(tf.add_n(losses))


def tf_keras_scale_loss_for_distribution(loss):
    """Returns ``loss`` divided by the replicas, as tf_keras scales a loss.

    Calls ``tf_keras.src.utils.losses_utils.scale_loss_for_distribution``
    (tf_keras 2.15-2.21). Public alternative: see `tf_keras_sum_added_losses`.
    """
    return _tf_keras_losses_utils().scale_loss_for_distribution(loss)
