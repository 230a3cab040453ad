"""Flooding: keep the training loss floating around a level instead of zero."""

import math
import numbers
import re

from keras_reg._compat import keras
from keras_reg.backend import replicas

ops = keras.ops


def _scope_name(fn):
    """A name for ``fn`` that TensorFlow accepts as a name scope.

    `keras.losses.Loss.__call__` opens a name scope with the loss's name, and
    TensorFlow rejects names such as ``"<lambda>"`` once the step is traced
    (only letters, digits and ``_ . - / >`` are allowed). Other characters
    become ``"_"``; callables without ``__name__`` (e.g. ``functools.partial``)
    take Keras's automatic name.
    """
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        return None
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or None


class _FunctionLoss(keras.losses.Loss):
    """Averages a per-example loss function over the batch (not serialised)."""

    def __init__(self, fn):
        super().__init__(name=_scope_name(fn))
        self.fn = fn

    def call(self, y_true, y_pred):
        y_true, y_pred = _same_rank(
            ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred)
        )
        return self.fn(y_true, y_pred)


def _same_rank(y_true, y_pred):
    """Aligns ranks that differ by a trailing 1, as Keras does for loss functions.

    ``(batch,)`` labels against ``(batch, 1)`` predictions must neither
    broadcast to ``(batch, batch)`` nor be squeezed to ``(batch,)``: a loss
    function reducing the last axis would then return one batch value instead
    of one value per example, and sample weights would only rescale it. The
    rank-1 side is expanded to ``(batch, 1)``; otherwise the side with the
    extra trailing 1 is squeezed (the rule of Keras's ``LossFunctionWrapper``).
    """
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            y_pred = ops.expand_dims(y_pred, axis=-1)
        else:
            y_true = ops.squeeze(y_true, axis=-1)
    elif pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            y_true = ops.expand_dims(y_true, axis=-1)
        else:
            y_pred = ops.squeeze(y_pred, axis=-1)
    return y_true, y_pred


def _as_loss(loss):
    """Resolves ``loss`` to a reducing `keras.losses.Loss` instance."""
    resolved = loss
    if isinstance(loss, (str, dict)):
        try:
            resolved = keras.losses.get(loss)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "Flooding could not resolve `loss` with keras.losses.get. "
                f"Received: loss={loss!r}. Pass a Keras loss identifier such as "
                '"mse", a `keras.losses.Loss` instance or a callable '
                "`fn(y_true, y_pred)`."
            ) from error
    if isinstance(resolved, keras.losses.Loss):
        if resolved.reduction in (None, "none"):
            raise ValueError(
                "Flooding needs the batch loss, but the wrapped loss does not "
                f"reduce: Received: loss={loss!r} with "
                f"reduction={resolved.reduction!r}. Create the loss with "
                'reduction="sum_over_batch_size" (the default).'
            )
        return resolved
    if callable(resolved):
        return _FunctionLoss(resolved)
    raise ValueError(
        'Flooding expects `loss` to be a Keras loss identifier (e.g. "mse"), a '
        "`keras.losses.Loss` instance or a callable `fn(y_true, y_pred)`. "
        f"Received: loss={loss!r} of type {type(loss).__name__}."
    )


def _check_level(level):
    try:  # math.isfinite raises OverflowError for ints beyond float range
        finite = isinstance(level, numbers.Real) and math.isfinite(level)
    except OverflowError:
        finite = False
    if isinstance(level, bool) or not finite or level < 0:
        raise ValueError(
            "`level` (the flood level b) must be a finite number >= 0, in the "
            f"units of the wrapped loss. Received: level={level!r}. A level "
            "slightly below the training loss you expect to reach is typical; "
            "0 disables flooding."
        )
    return float(level)


@keras.saving.register_keras_serializable(package="keras_reg")
class Flooding(keras.losses.Loss):
    """Wraps a loss so that its batch value floats around a flood level ``b``.

    The wrapped loss ``L`` (reduced over the batch) becomes

        |L - b| + b

    Above the level this is ``L`` (ordinary descent); below it, ``2b - L``,
    whose gradient is the negated gradient of ``L`` (ascent). Training then
    hovers around ``L = b`` instead of driving the training loss to zero, which
    Ishida et al. found can give a second descent of the test loss.

    Why the batch mean and not each example: flooding is defined on the
    mini-batch objective. Applied per example, ``mean_i(|l_i - b| + b)`` is a
    different objective: examples already below ``b`` are pushed up while the
    others are pushed down even when the batch loss is far above ``b``, so it
    never reduces to the original loss, and its gradient ascent does not switch
    off when ``mean_i l_i > b``. The wrapped loss must therefore reduce (any
    reduction except ``None``/``"none"``), and ``b`` is in the units of that
    reduced value (per-example average for the default
    ``"sum_over_batch_size"``). Sample weights and Keras masks are applied by
    the wrapped loss before flooding.

    Under ``tf.distribute`` the flood acts on the global batch loss, as on one
    device: each replica's shard loss is averaged over the replicas to decide
    between descent and ascent (``level`` needs no change with the number of
    devices). Shards are assumed to be of one size, as in Keras's own
    averaging.

    Example:
    ```python
    model.compile(
        optimizer="adam",
        loss=keras_reg.losses.Flooding("sparse_categorical_crossentropy", 0.05),
    )
    ```

    References:
        T. Ishida, I. Yamane, T. Sakai, G. Niu, M. Sugiyama, "Do We Need Zero
        Training Loss After Achieving Zero Training Error?", ICML 2020,
        arXiv:2002.08709; Su Jianlin, "我们真的需要把训练集的损失降低到零吗?" (Do we
        really need to drive the training loss to zero?),
        https://kexue.fm/archives/7643 .

    Args:
        loss: The loss to flood: an identifier for `keras.losses.get` (e.g.
            ``"mse"``), a `keras.losses.Loss` instance that reduces, or a
            callable ``fn(y_true, y_pred)`` returning per-example losses (it is
            averaged over the batch; ``(batch,)`` labels against ``(batch, 1)``
            predictions are expanded to ``(batch, 1)`` first, as Keras does).
            A lambda trains on every backend, but Keras saves it as bytecode:
            loading then needs ``safe_mode=False`` and only works for a lambda
            that uses no module-level names. For a model that saves and loads
            cleanly pass a named function decorated with
            ``keras.saving.register_keras_serializable()``.
        level: The flood level ``b >= 0``.
        name: Name of the loss instance.
        dtype: Dtype of the flooding arithmetic; defaults to
            ``keras.backend.floatx()``.
    """

    def __init__(self, loss, level, name="flooding", dtype=None):
        self.level = _check_level(level)
        self.loss = loss
        self._inner = _as_loss(loss)
        self._dtype_argument = dtype
        super().__init__(name=name, reduction=self._inner.reduction, dtype=dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Returns ``|L - b| + b`` for the wrapped batch loss ``L``."""
        value = self._inner(y_true, y_pred, sample_weight=sample_weight)
        value = ops.cast(value, self.dtype)
        level = ops.cast(self.level, self.dtype)
        reduced = replicas.global_sum(value)
        if reduced is None:
            return ops.abs(value - level) + level
        # Several replicas, each with its shard's share of L (Keras divides by
        # the replicas): each returns its share of the global |L - b| + b,
        # with the gradient sign(L - b) x its share's gradient.
        batch, count = reduced
        sign = ops.sign(batch - level)
        return sign * (value - ops.stop_gradient(value)) + (
            ops.abs(batch - level) + level
        ) / count

    def call(self, y_true, y_pred):
        """Returns the flooded batch loss without sample weights."""
        return self(y_true, y_pred)

    def get_config(self):
        """Returns the wrapped loss (serialised), the level and the name."""
        return {
            "loss": keras.saving.serialize_keras_object(self.loss),
            "level": self.level,
            "name": self.name,
            "dtype": keras.saving.serialize_keras_object(self._dtype_argument),
        }

    @classmethod
    def from_config(cls, config):
        """Creates a `Flooding` from `get_config` output."""
        config = dict(config)
        loss = config.pop("loss")
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return cls(loss=loss, **config)
