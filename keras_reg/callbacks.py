"""Callbacks: a regulariser for one ``fit``; gradient norms logged every epoch."""

import sys
import weakref

import numpy as np

from keras_reg._compat import keras
from keras_reg.backend import collective_clash, eager_gradients
from keras_reg.training.core import installer as step
from keras_reg.training.core.embedding import find_embedding_layer
from keras_reg.validation import integer_argument

# Model -> the RegularizationScope whose fit is running on it.
_ACTIVE = weakref.WeakKeyDictionary()


def _ends_an_epoch(error):
    """Whether ``error`` is how a train function says its data ran out."""
    return isinstance(error, StopIteration) or type(error).__name__ == (
        "OutOfRangeError"
    )


class _ScopeMixin:
    """Installs the regulariser when ``fit`` begins and restores the model after.

    The model's previous state (plain, or the regulariser installed before)
    comes back when ``fit`` ends; when a training step raises (the exception
    passes through the train function, which the scope wraps); and otherwise
    -- an exception raised by another callback, which no callback can see --
    at the start of the model's next ``fit`` or ``train_on_batch``, before its
    first step (the scope wraps ``make_train_function``, which both call).
    """

    def __init__(self, regularizer, start_epoch=0):
        super().__init__()
        regularizer = step.check_regularizer(regularizer)
        self.regularizer = regularizer
        self.start_epoch = _start_epoch(regularizer, start_epoch)
        self._previous = None
        self._installed_on = None
        self._own_call = False
        self._waiting = False

    def on_train_begin(self, logs=None):
        if self.start_epoch > 0:
            self._waiting = True  # installed by on_epoch_begin(start_epoch)
            return
        self._begin()

    def _begin(self):
        model = self.model
        other = _ACTIVE.get(model)
        if other is not None and other is not self:
            other._restore()
            raise ValueError(
                "Two RegularizationScope callbacks were given to one fit on model "
                f"{model.name!r} ({other.regularizer!r} and {self.regularizer!r}). "
                "Pass one scope; to train with both, give it a list: "
                "RegularizationScope([first, second])."
            )
        self._previous = step.installed_regularizer(model)
        step.install(model, self.regularizer)
        self._installed_on = model
        _ACTIVE[model] = self
        model.make_train_function = self._make_train_function
        # fit() has already made its train function: make it again, now.
        self._own_call = True
        try:
            self._make_train_function(force=True)
        finally:
            self._own_call = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._waiting and epoch >= self.start_epoch:
            self._waiting = False
            self._begin()
        if self._installed_on is None:
            return
        if self.regularizer.on_epoch_begin(epoch):
            # The regulariser's step changes: trace it anew. jax.jit caches
            # traces by function, and re-jitting the same bound train_step
            # would reuse the old trace: give the step a new identity first.
            step.retrace(self._installed_on)
            self._own_call = True
            try:
                self._make_train_function(force=True)
            finally:
                self._own_call = False

    def on_train_end(self, logs=None):
        self._waiting = False
        self._restore()

    def _make_train_function(self, *args, **kwargs):
        model = self._installed_on
        if not self._own_call:
            # A new fit (or train_on_batch) began: this scope's fit is over.
            self._restore()
            return model.make_train_function(*args, **kwargs)
        type(model).make_train_function(model, *args, **kwargs)
        model.train_function = self._guarded(
            collective_clash.guarded(model.train_function, model)
        )
        return model.train_function

    def _guarded(self, function):
        def train_function(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except BaseException as error:
                if not _ends_an_epoch(error):
                    self._restore()
                raise

        return train_function

    def _restore(self):
        """Puts the model back as it was before this scope's fit, once."""
        model, self._installed_on = self._installed_on, None
        if model is None:
            return
        if model.__dict__.get("make_train_function") == self._make_train_function:
            del model.make_train_function
        if _ACTIVE.get(model) is self:
            del _ACTIVE[model]
        step.remove(model)
        if self._previous is not None:
            step.install(model, self._previous)
        self._previous = None


def _start_epoch(regularizer, start_epoch):
    """The scope's first epoch: ``start_epoch``, or the regulariser's deprecated one."""
    start_epoch = integer_argument("start_epoch", start_epoch, 0, example=1)
    own = getattr(regularizer, "start_epoch", 0)
    if own and start_epoch and own != start_epoch:
        raise ValueError(
            f"RegularizationScope(start_epoch={start_epoch}) and {regularizer!r} "
            f"(start_epoch={own}) disagree. Pass the warm-up to the scope only: "
            f"RegularizationScope({type(regularizer).__name__}(...), "
            f"start_epoch={start_epoch})."
        )
    return start_epoch or own


class RegularizationScope(_ScopeMixin, keras.callbacks.Callback):
    """Trains with ``regularizer`` during one ``fit`` only.

    At the end of ``fit`` the model's previous step (plain, or the regulariser
    installed before) is back, also when a training step raises. In a process
    where ``import keras`` is tf_keras (bert4keras with ``TF_KERAS=1``), this
    builds a tf_keras callback instead; elsewhere use `tf_keras_scope` for a
    tf_keras model.

    With ``start_epoch=N`` the first N epochs of the ``fit`` (counted as
    ``fit`` counts them, ``initial_epoch`` included) train plainly and the
    regulariser is installed when epoch N begins (its logged terms appear
    from then on). To ramp a strength up over steps instead, give the
    regulariser a schedule (see `keras_reg.training.core.schedule`). This is
    the one warm-up mechanism: ``AWP(start_epoch=N)`` (deprecated) is read as
    the scope's ``start_epoch=N``.

    Args:
        regularizer: A `keras_reg.TrainingRegularizer` instance, e.g.
            `keras_reg.FGM`, or a list of them (see `keras_reg.Composition`).
        start_epoch: The epoch (0-based) from which to train with it.

    Raises:
        TypeError: ``regularizer`` is not a regulariser instance (a name or a
            class).
        ValueError: ``start_epoch`` is not an integer >= 0.

    Example:
        >>> scope = keras_reg.callbacks.RegularizationScope(
        ...     keras_reg.FGM("Embedding-Token", epsilon=1.0))
        >>> model.fit(x, y, callbacks=[scope])   # adversarial training
        >>> model.fit(x, y)                      # plain training again
        >>> later = keras_reg.callbacks.RegularizationScope(
        ...     keras_reg.FGM("Embedding-Token"), start_epoch=2)
        >>> model.fit(x, y, epochs=5, callbacks=[later])  # FGM from epoch 2
    """

    def __new__(cls, *args, **kwargs):
        if cls is RegularizationScope and _legacy_keras_active():
            instance = object.__new__(_tf_keras_scope_class())
            instance.__init__(*args, **kwargs)
            return instance
        return super().__new__(cls)

    def set_model(self, model):
        if _is_tf_keras(model):
            raise TypeError(
                f"Model {model.name!r} is a tf_keras model, and this "
                "RegularizationScope is a Keras 3 callback. Create the scope with "
                "`keras_reg.callbacks.tf_keras_scope(regularizer)` instead."
            )
        super().set_model(model)


def tf_keras_scope(regularizer, start_epoch=0):
    """Returns a `RegularizationScope` that is a tf_keras callback.

    For a tf_keras model in a process where ``import keras`` is Keras 3 (in a
    bert4keras process `RegularizationScope` already is one).

    Args:
        regularizer: A `keras_reg.TrainingRegularizer` instance.
        start_epoch: As `RegularizationScope`.
    """
    instance = object.__new__(_tf_keras_scope_class())
    instance.__init__(regularizer, start_epoch=start_epoch)
    return instance


def _is_tf_keras(model):
    return any(c.__module__.startswith("tf_keras.") for c in type(model).__mro__)


def _legacy_keras_active():
    active = sys.modules.get("keras")
    return active is not None and active.__name__.startswith("tf_keras")


_TF_KERAS_SCOPE = []


def _tf_keras_scope_class():
    if not _TF_KERAS_SCOPE:
        import tf_keras

        _TF_KERAS_SCOPE.append(
            type(
                "RegularizationScope",
                (_ScopeMixin, tf_keras.callbacks.Callback),
                {"__doc__": RegularizationScope.__doc__, "__module__": __name__},
            )
        )
    return _TF_KERAS_SCOPE[0]


def _lengths(structure):
    """The leading dimension of each array in ``structure`` (None: a scalar)."""
    lengths = []
    for leaf in keras.tree.flatten(structure):
        shape = getattr(leaf, "shape", None)
        if shape is None:
            shape = np.shape(leaf)
        if len(shape) == 0:
            lengths.append(None)
        elif shape[0] is not None:
            lengths.append(int(shape[0]))
    return lengths


def _check_probe(x, y, sample_weight):
    """Checks the probe batch now, not after an epoch of training."""
    if y is None:
        raise ValueError(
            "GradientNorms needs the probe batch's targets: received y=None. The "
            "norms are those of the compiled loss's gradient, which needs y: "
            "pass e.g. `GradientNorms(x_val[:128], y_val[:128])`."
        )
    named = {"x": x, "y": y, "sample_weight": sample_weight}
    lengths = {
        name: _lengths(value) for name, value in named.items() if value is not None
    }
    found = {length for values in lengths.values() for length in values}
    if len(found) > 1 or None in found:
        shown = ", ".join(
            f"{name}: {values[0] if len(values) == 1 else values}"
            for name, values in lengths.items()
        )
        raise ValueError(
            "GradientNorms needs one probe batch: every array of `x`, `y` and "
            "`sample_weight` with the same number of examples (first dimension); "
            f"received {shown}. Slice them alike, e.g. "
            "`GradientNorms(x_val[:128], y_val[:128])`."
        )


class _GradientNormsMixin:
    """Logs ||dL/d inputs|| and ||dL/d theta|| on a probe batch every epoch."""

    def __init__(self, x, y, embedding_name=None, sample_weight=None):
        super().__init__()
        if embedding_name is not None and (
            not isinstance(embedding_name, str) or not embedding_name
        ):
            raise ValueError(
                "`embedding_name` must be the name of an embedding layer or None, "
                f"received embedding_name={embedding_name!r}."
            )
        if embedding_name is None and not eager_gradients.float_leaves(x):
            raise ValueError(
                "GradientNorms: the probe inputs `x` have no floating-point array "
                f"(dtypes: {_dtypes(x)}), so there is no input gradient to take. "
                "For token ids, pass the name of the embedding layer, e.g. "
                "`GradientNorms(x, y, embedding_name='Embedding-Token')`: the "
                "gradient is then taken with respect to the looked-up vectors."
            )
        _check_probe(x, y, sample_weight)
        self.x = x
        self.y = y
        self.embedding_name = embedding_name
        self.sample_weight = sample_weight

    def on_train_begin(self, logs=None):
        self._layer()  # An unknown layer name fails now, not after an epoch.

    def _layer(self):
        if self.embedding_name is None:
            return None
        return find_embedding_layer(self.model, self.embedding_name)

    def gradient_norms(self):
        """Returns ``{'grad_norm_inputs': ..., 'grad_norm_weights': ...}`` now."""
        gradients = eager_gradients.loss_gradients(
            self.model, self.x, self.y, self.sample_weight, layer=self._layer()
        )
        return {
            "grad_norm_inputs": eager_gradients.global_norm(gradients.targets),
            "grad_norm_weights": eager_gradients.global_norm(gradients.weights),
        }

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(self.gradient_norms())


class GradientNorms(_GradientNormsMixin, keras.callbacks.Callback):
    """Logs the loss's input-gradient and weight-gradient norms every epoch.

    At the end of each epoch, on the fixed probe batch ``(x, y,
    sample_weight)`` (one batch: keep it small, e.g. 32-256 examples), with L
    the model's loss in inference mode (``training=False``: the compiled loss
    with sample weights, plus ``model.losses``), it adds to the epoch's logs

    - ``grad_norm_inputs``: ||dL/dx|| over the float inputs x, or, with
      ``embedding_name``, over the looked-up vectors (the gradient with respect
      to the embedding layer's output, one vector per token occurrence: what
      `keras_reg.GradientPenalty` penalises);
    - ``grad_norm_weights``: ||dL/dtheta|| over all trainable weights (an
      embedding matrix's rows of repeated tokens summed: the dense gradient;
      what `keras_reg.ParameterGradientPenalty` penalises).

    Both are Euclidean norms over everything concatenated. They appear in
    ``History``, in the progress bar's epoch line, and in callbacks that come
    after this one in the ``callbacks`` list (list it before ``TensorBoard``,
    ``CSVLogger`` or ``EarlyStopping(monitor='grad_norm_...')``: Keras hands
    every callback the same logs, in order, and adds its ``History`` and
    progress bar last).

    Why watch both: Su Jianlin, 输入梯度惩罚与参数梯度惩罚的一个不等式 (an
    inequality between the input and the parameter gradient penalty,
    https://kexue.fm/archives/8796, after Dherin et al. 2021, "The Geometric
    Occam's Razor Implicit in Deep Learning") shows that for an MLP
    ``h_{t+1} = g_t(W_t h_t + b_t)``, h_1 = x, and a scalar f of the output,
    ``||df/dx||^2 * sum_t (1 + ||h_t||^2) / (||W_t||^2 ||dh_t/dx||^2) <=
    ||df/dtheta||^2`` (spectral norms). So a small parameter gradient bounds
    the input gradient: penalising ||dL/dtheta|| (explicitly, or implicitly by
    gradient descent with a finite learning rate) also acts like an input
    gradient penalty, though not conversely. The inequality holds per example;
    these are norms of the batch loss's gradients, so read them as trends
    (e.g. baseline vs a gradient penalty), not as a check of the bound.

    The gradients are taken eagerly (a `tf.GradientTape`, ``jax.grad``,
    ``torch.autograd``; see `keras_reg.backend.eager_gradients`), once per
    epoch, at the unperturbed weights; nothing is written to the model. In a
    process where ``import keras`` is tf_keras (bert4keras with
    ``TF_KERAS=1``) this builds a tf_keras callback; elsewhere use
    `tf_keras_gradient_norms` for a tf_keras model.

    Args:
        x: Probe inputs: an array, or a list/dict of arrays as the model takes.
        y: Probe targets.
        embedding_name: Name of the embedding layer whose outputs replace the
            inputs (needed when the inputs are token ids), e.g.
            ``'Embedding-Token'``; None: the float inputs.
        sample_weight: Per-example weights of the probe, or None.

    Raises:
        ValueError: ``y`` is None; the arrays of ``x``, ``y`` and
            ``sample_weight`` differ in length; ``embedding_name`` is None and
            ``x`` has no float array; or, when ``fit`` begins, no embedding
            layer has that name.

    Example:
        >>> norms = keras_reg.callbacks.GradientNorms(
        ...     x_val[:128], y_val[:128], embedding_name="Embedding-Token")
        >>> history = model.fit(x, y, epochs=5, callbacks=[norms])
        >>> history.history["grad_norm_inputs"], history.history["grad_norm_weights"]
    """

    def __new__(cls, *args, **kwargs):
        if cls is GradientNorms and _legacy_keras_active():
            instance = object.__new__(_tf_keras_gradient_norms_class())
            instance.__init__(*args, **kwargs)
            return instance
        return super().__new__(cls)

    def set_model(self, model):
        if _is_tf_keras(model):
            raise TypeError(
                f"Model {model.name!r} is a tf_keras model, and this GradientNorms "
                "is a Keras 3 callback. Create it with "
                "`keras_reg.callbacks.tf_keras_gradient_norms(x, y, ...)` instead."
            )
        super().set_model(model)


def tf_keras_gradient_norms(x, y, embedding_name=None, sample_weight=None):
    """Returns a `GradientNorms` that is a tf_keras callback.

    For a tf_keras model in a process where ``import keras`` is Keras 3 (in a
    bert4keras process `GradientNorms` already is one). Arguments as
    `GradientNorms`.
    """
    instance = object.__new__(_tf_keras_gradient_norms_class())
    instance.__init__(x, y, embedding_name=embedding_name, sample_weight=sample_weight)
    return instance


def _dtypes(x):
    return ", ".join(
        str(getattr(leaf, "dtype", type(leaf).__name__))
        for leaf in keras.tree.flatten(x)
    )


_TF_KERAS_GRADIENT_NORMS = []


def _tf_keras_gradient_norms_class():
    if not _TF_KERAS_GRADIENT_NORMS:
        import tf_keras

        _TF_KERAS_GRADIENT_NORMS.append(
            type(
                "GradientNorms",
                (_GradientNormsMixin, tf_keras.callbacks.Callback),
                {"__doc__": GradientNorms.__doc__, "__module__": __name__},
            )
        )
    return _TF_KERAS_GRADIENT_NORMS[0]
