"""Weight constraints: `SpectralNorm` bounds the largest singular value of a weight.

Registered for Keras serialisation under the ``keras_reg`` package, so a model
using them loads with `keras.models.load_model` after ``import keras_reg``.
"""

from keras_reg import spectral
from keras_reg._compat import keras
from keras_reg.validation import positive_number

ops = keras.ops


@keras.saving.register_keras_serializable(package="keras_reg")
class SpectralNorm(keras.constraints.Constraint):
    """Rescales a weight after each update so its largest singular value <= max_value.

    The weight is read as the matrix ``reshape(w, (-1, w.shape[-1]))`` (a
    ``Dense`` kernel as is; a convolution kernel ``(kh, kw, in, out)`` as
    ``(kh * kw * in, out)``, the reshaping of Miyato et al. 2018; an
    ``Embedding`` table as ``(vocab, dim)``). If its largest singular value
    sigma exceeds ``max_value``, the whole weight is multiplied by
    ``max_value / sigma``; otherwise it is left alone. A weight with a
    non-finite entry (after a NaN batch) is returned unchanged, so the NaN
    stays where the update put it.

    How sigma is computed, and why: a constraint is a stateless function of the
    weight (no persistent power-iteration vector can live in it on every
    backend), and one power-iteration step from a fixed start underestimates
    sigma, which would leave the weight above the bound. So sigma is bounded
    from above instead, deterministically: the Gram matrix of the smaller side
    (``d = min(m, n)``) is squared ``k`` times (9 to 13 for d = 2 to 10^4),
    trace-normalised, and ``trace(G^(2^k))^(1/2^(k+1))`` is used. That is never
    below sigma and at most a factor ``d^(1/2^(k+1)) <= 1 + 1e-3`` above it,
    with ``k`` chosen from ``d``. After the rescaling, sigma is therefore in
    ``[max_value / (1 + 1e-3), max_value]`` (up to float32 rounding) whatever
    the spectrum: no gap between the top singular values is needed, unlike
    power iteration. Cost per constrained weight and step: ``k`` products of
    ``d x d`` matrices (matmuls only; compiled with the train step under
    ``jit_compile`` / XLA). For ``d`` in the hundreds that is milliseconds; for
    a very large layer prefer `keras_reg.layers.SpectralNormalization`.

    Example:
    ```python
    layer = keras.layers.Dense(
        64, kernel_constraint=keras_reg.constraints.SpectralNorm(1.0)
    )
    ```

    References:
        T. Miyato, T. Kataoka, M. Koyama, Y. Yoshida, "Spectral Normalization
        for Generative Adversarial Networks", ICLR 2018, arXiv:1802.05957;
        Su Jianlin, "深度学习中的Lipschitz约束：泛化与生成模型",
        https://kexue.fm/archives/6051 .

    Args:
        max_value: The largest singular value allowed (> 0).
    """

    def __init__(self, max_value=1.0):
        self.max_value = positive_number("max_value", max_value, 1.0)

    def __call__(self, w):
        """Returns ``w`` scaled by ``min(1, max_value / sigma(w))``."""
        w = ops.convert_to_tensor(w)
        _, upper = spectral.spectral_norm_bounds(w)
        scale = ops.minimum(1.0, self.max_value / ops.maximum(upper, 1e-30))
        # A weight with a non-finite entry has no singular values: leave it as
        # it is (unconstrained Keras would), not NaN in every entry.
        finite = ops.all(ops.isfinite(w))
        return ops.where(finite, w * ops.cast(scale, w.dtype), w)

    def get_config(self):
        """Returns ``{"max_value": ...}``."""
        return {"max_value": self.max_value}


_ALIASES = {"spectral_norm": SpectralNorm, "SpectralNorm": SpectralNorm}


def get(identifier):
    """Like `keras.constraints.get`, also resolving ``"spectral_norm"``.

    Keras resolves a string only among its own constraints (without patching
    Keras, ``kernel_constraint="spectral_norm"`` cannot work), so resolve it
    here: ``kernel_constraint=keras_reg.constraints.get("spectral_norm")``. A
    config dict ``{"class_name": "keras_reg>SpectralNorm", "config": {...}}``
    works in Keras directly.

    Args:
        identifier: A string, a config dict, a constraint or None.

    Returns:
        A constraint instance (or None).
    """
    if isinstance(identifier, str) and identifier in _ALIASES:
        return _ALIASES[identifier]()
    return keras.constraints.get(identifier)
