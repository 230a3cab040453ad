"""Weight regularisers: the spectral-norm penalty and WEISSI.

Both are plain Keras regularisers (``kernel_regularizer=``), registered for
Keras serialisation under the ``keras_reg`` package.
"""

import warnings

from keras_reg import spectral
from keras_reg._compat import keras
from keras_reg.validation import non_negative_number

ops = keras.ops

_TINY = 1e-30


@keras.saving.register_keras_serializable(package="keras_reg")
class SpectralNormRegularizer(keras.regularizers.Regularizer):
    """Adds ``weight * sigma(W)^2``, sigma the largest singular value of ``W``.

    ``W`` is read as ``reshape(W, (-1, W.shape[-1]))`` (convolution kernels as
    in Miyato et al. 2018). sigma comes from `keras_reg.spectral`: repeated
    squaring of the Gram matrix of the smaller side finds the top right
    singular vector ``u`` (held constant), then ``sigma = ||W u||``, so the
    gradient is ``2 * weight * sigma * v u^T`` as in Yoshida & Miyato (2017),
    without a persistent vector and without the underestimate of one power
    iteration from a fixed start.

    Example:
    ```python
    layer = keras.layers.Dense(
        64, kernel_regularizer=keras_reg.regularizers.SpectralNormRegularizer(1e-3)
    )
    ```

    References:
        Y. Yoshida, T. Miyato, "Spectral Norm Regularization for Improving the
        Generalizability of Deep Learning", 2017, arXiv:1705.10941;
        Su Jianlin, "深度学习中的Lipschitz约束：泛化与生成模型",
        https://kexue.fm/archives/6051 .

    Args:
        weight: The factor in front of sigma squared (>= 0).
    """

    def __init__(self, weight=1e-3):
        self.weight = non_negative_number("weight", weight, 1e-3)

    def __call__(self, w):
        """Returns ``weight * sigma(w)^2``."""
        lower, _ = spectral.spectral_norm_bounds(w)
        return self.weight * ops.square(lower)

    def get_config(self):
        """Returns ``{"weight": ...}``."""
        return {"weight": self.weight}


def _weissi_terms(w):
    w = ops.convert_to_tensor(w)
    squares = ops.maximum(ops.sum(ops.square(w)), _TINY)
    log_norm = 0.5 * ops.log(squares)
    direction_l1 = ops.sum(ops.abs(w)) / ops.sqrt(squares)
    return log_norm, direction_l1


@keras.saving.register_keras_serializable(package="keras_reg")
class WEISSI(keras.regularizers.Regularizer):
    """The weight-scale-shift-invariant regulariser of Liu et al. (2020), per kernel.

    For one kernel ``W`` (Frobenius norm ``||W||``) it adds

        weight * log ||W||  +  direction_l1 * || W / ||W|| ||_1

    Put it on every kernel of a chain of positively homogeneous layers (Dense
    or convolutions with ReLU / linear activations, max-pooling) with the same
    ``weight`` (`apply_weissi` does that) and Keras sums the per-layer terms
    into ``weight * log prod_l ||W_l|| + direction_l1 * sum_l ||W_l/||W_l|| ||_1``,
    the form in Su Jianlin's reading of the paper. Why it behaves better than
    L2: such a network computes the same function after ``W_l -> gamma_l W_l``
    with ``prod_l gamma_l = 1`` (biases scaled by the running product), and so
    does this sum, while ``sum_l ||W_l||^2`` changes; L2 can therefore be
    lowered by shifting scale between layers without changing the function. A
    common scale ``gamma`` on every layer still lowers the sum by
    ``L * weight * log gamma``: like L2 it shrinks the function. Its gradient,
    ``weight * W / ||W||^2``, is weight decay with a coefficient
    ``weight / ||W||^2``. The second term depends only on the direction of
    ``W`` (the paper's sparsity term on the direction).

    The log term is negative for ``||W|| < 1`` and unbounded below as
    ``||W|| -> 0``: it is only meaningful next to a data loss that needs the
    network's scale, with a small ``weight``; the value, not just its sign,
    carries no meaning on its own.

    Example:
    ```python
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])
    keras_reg.regularizers.apply_weissi(model, weight=1e-3)
    model.compile(...)
    ```

    References:
        Z. Liu, Y. Cui, A. B. Chan, "Improve Generalization and Robustness of
        Neural Networks via Weight Scale Shifting Invariant Regularizations",
        2020, arXiv:2008.02965; Su Jianlin, "L2正则没有想象那么好？可能是
        权重尺度偏移惹的祸" (L2 regularisation is not as good as imagined?),
        https://kexue.fm/archives/7681 , whose final form (log of the norms plus
        an L1 penalty on the direction) this implements.

    Args:
        weight: Factor of ``log ||W||`` (>= 0); Su's lambda_1.
        direction_l1: Factor of ``||W / ||W|| ||_1`` (>= 0); Su's lambda_2.
    """

    def __init__(self, weight=1e-3, direction_l1=0.0):
        self.weight = non_negative_number("weight", weight, 1e-3)
        self.direction_l1 = non_negative_number("direction_l1", direction_l1, 0.0)

    def __call__(self, w):
        """Returns ``weight * log ||w|| + direction_l1 * ||w / ||w|| ||_1``."""
        log_norm, direction_l1 = _weissi_terms(w)
        value = self.weight * log_norm
        if self.direction_l1:
            value = value + self.direction_l1 * direction_l1
        return value

    def get_config(self):
        """Returns ``{"weight": ..., "direction_l1": ...}``."""
        return {"weight": self.weight, "direction_l1": self.direction_l1}


def weissi(kernels, weight=1.0, direction_l1=0.0):
    """Returns the model-level WEISSI value over ``kernels``.

    ``weight * log prod_l ||W_l|| + direction_l1 * sum_l ||W_l / ||W_l|| ||_1``:
    the sum of `WEISSI` over the kernels, for a custom training loop or to log
    the quantity the regulariser controls.

    Args:
        kernels: Kernels (variables or tensors), e.g.
            ``[layer.kernel for layer in model.layers if hasattr(layer, "kernel")]``.
        weight: Factor of the log-norms.
        direction_l1: Factor of the L1 norms of the directions.

    Returns:
        A scalar tensor.
    """
    regularizer = WEISSI(weight=weight, direction_l1=direction_l1)
    kernels = list(kernels)
    if not kernels:
        raise ValueError("weissi() needs at least one kernel; received none.")
    return ops.sum(ops.stack([regularizer(kernel) for kernel in kernels]))


def _sublayers(layer):
    """The layers ``layer`` holds as attributes (directly, or in lists/dicts)."""
    found = []
    pending = list(vars(layer).values())
    while pending:
        value = pending.pop(0)
        if isinstance(value, keras.layers.Layer):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
    return found


def _layers_with_kernels(model):
    """Layers with a kernel regulariser slot, at any depth.

    Returns:
        ``(layers, hidden)``: every layer with a ``kernel_regularizer`` (nested
        models, and sublayers of custom layers, e.g. the attention and
        feed-forward layers of a transformer block, included), and the names of
        the custom layers whose sublayers are among them: their configs rebuild
        those sublayers, so a regulariser set on them is not saved.
    """
    found, hidden, seen = [], [], set()

    def visit(layer, owner):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            children = list(layer.layers)
        else:
            children = _sublayers(layer)
            if hasattr(layer, "kernel_regularizer"):
                found.append(layer)
                if owner is not None and owner.name not in hidden:
                    hidden.append(owner.name)
            owner = owner or layer
        for child in children:
            visit(child, owner if not isinstance(layer, keras.Model) else None)

    for layer in model.layers:
        visit(layer, None)
    return found, hidden


def apply_weissi(model, weight=1e-3, direction_l1=0.0):
    """Puts one `WEISSI` regulariser on every kernel of ``model``.

    WEISSI couples the layers of a network: its invariance to moving scale from
    one layer to another (``W_l -> gamma_l W_l``, ``prod gamma_l = 1``) holds
    only if every kernel of the chain carries the same ``weight``. This sets
    ``kernel_regularizer`` on each layer that has one (Dense, convolutions,
    EinsumDense; built or not), at any depth: in nested models and inside
    custom layers (a transformer block's attention and feed-forward layers),
    so the model's ``losses`` carry ``weight * log prod_l ||W_l|| + ...``.
    The layers of a model (nested models included) save and load with the
    regulariser; a custom layer rebuilds its sublayers from its own config,
    which does not hold their regularisers: a warning names such layers, and
    after ``load_model`` call ``apply_weissi`` again. Call it before or after
    ``compile``, or between two ``fit`` calls: the model's compiled train and
    test functions are rebuilt.

    Args:
        model: A Keras 3 model.
        weight: Factor of ``log ||W_l||`` on every kernel.
        direction_l1: Factor of ``||W_l / ||W_l|| ||_1`` on every kernel.

    Returns:
        The names of the layers that received the regulariser.

    Raises:
        ValueError: A layer already has another kernel regulariser, the model
            has no layer with a kernel, or it is not a Keras 3 model.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "apply_weissi needs a Keras 3 model; received "
            f"{type(model).__module__}.{type(model).__name__}. In tf_keras, pass "
            "kernel_regularizer=keras_reg.regularizers.WEISSI(weight) to every "
            "Dense / Conv layer instead (tf_keras reads a regulariser only when "
            "the layer is built)."
        )
    regularizer = WEISSI(weight=weight, direction_l1=direction_l1)
    layers, hidden = _layers_with_kernels(model)
    taken = [
        layer.name
        for layer in layers
        if layer.kernel_regularizer is not None
        and not isinstance(layer.kernel_regularizer, WEISSI)
    ]
    if taken:
        raise ValueError(
            "apply_weissi: these layers already have a kernel regulariser: "
            f"{', '.join(taken)}. WEISSI replaces L2 on the kernels; remove the "
            "other regulariser first (layer.kernel_regularizer = None)."
        )
    if not layers:
        raise ValueError(
            f"apply_weissi: model {model.name!r} has no layer with a kernel."
        )
    for layer in layers:
        layer.kernel_regularizer = regularizer
        if layer.built:
            layer.kernel.regularizer = regularizer
    # A model that has trained or evaluated holds compiled functions traced
    # without the regulariser (TensorFlow, JAX): rebuild them at the next call.
    for name in ("train_function", "test_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    if hidden:
        warnings.warn(
            f"apply_weissi: the kernels inside {', '.join(hidden)} now carry "
            "WEISSI, but those layers rebuild their sublayers from their own "
            "config, which does not hold a sublayer's regulariser: after "
            "`keras.models.load_model`, call `apply_weissi(model, ...)` again.",
            stacklevel=2,
        )
    return [layer.name for layer in layers]


_ALIASES = {
    "spectral_norm": SpectralNormRegularizer,
    "SpectralNormRegularizer": SpectralNormRegularizer,
    "weissi": WEISSI,
    "WEISSI": WEISSI,
}


def get(identifier):
    """Like `keras.regularizers.get`, also resolving ``"spectral_norm"``, ``"weissi"``.

    Keras resolves a string only among its own regularisers, so
    ``kernel_regularizer="weissi"`` cannot work without patching Keras; use
    ``kernel_regularizer=keras_reg.regularizers.get("weissi")`` (default
    arguments), or a config dict ``{"class_name": "keras_reg>WEISSI",
    "config": {...}}``, which Keras resolves itself.

    Args:
        identifier: A string, a config dict, a regulariser or None.

    Returns:
        A regulariser instance (or None).
    """
    if isinstance(identifier, str) and identifier in _ALIASES:
        return _ALIASES[identifier]()
    return keras.regularizers.get(identifier)
