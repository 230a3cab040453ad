"""A wrapper that runs a layer with its kernel divided by the kernel's spectral norm."""

import numbers

from keras_reg import spectral
from keras_reg._compat import keras

ops = keras.ops


def _weight_of(layer):
    for name in ("kernel", "embeddings"):
        try:
            weight = getattr(layer, name, None)
        except AttributeError:  # an unbuilt layer's property raises
            weight = None
        if weight is not None:
            break
    else:
        raise ValueError(
            "SpectralNormalization needs a layer with a `kernel` (Dense, "
            "Conv*, EinsumDense, ...) or `embeddings` (Embedding) weight; "
            f"received {type(layer).__name__} {layer.name!r}, which has neither."
        )
    if not isinstance(weight, keras.Variable):
        raise ValueError(
            f"SpectralNormalization: the {name} of layer {layer.name!r} is a "
            "computed tensor (LoRA or quantisation enabled), not a variable; "
            "wrap the layer before enabling LoRA or quantising it."
        )
    return weight


@keras.saving.register_keras_serializable(package="keras_reg")
class SpectralNormalization(keras.layers.Wrapper):
    """Runs ``layer`` with its kernel ``W`` replaced by ``W / sigma(W)``.

    sigma is the largest singular value of the kernel read as a matrix
    ``(-1, W.shape[-1])`` (a convolution kernel ``(kh, kw, in, out)`` as
    ``(kh * kw * in, out)``), estimated as in Miyato et al. (2018): a persistent
    unit vector ``u`` (a non-trainable weight of this wrapper, saved with the
    model) is refined by ``power_iterations`` steps of power iteration at every
    training call, and ``sigma = v^T W u`` with ``u`` and ``v`` held constant, so
    the gradient flows through sigma (``d sigma / dW = v u^T``), as in the paper.
    Outside training, ``u`` is used as stored and not updated.

    What differs from ``keras.layers.SpectralNormalization``: nothing is ever
    written to the kernel. The wrapped layer is called with ``W / sigma``
    substituted for its kernel's value (a nested `keras.StatelessScope` that maps
    all of the wrapped layer's variables), and the only state that changes is
    ``u``. So the same code trains on TensorFlow (graph, XLA, and in a
    ``tf.distribute`` replica context: ``u`` is created with
    ``aggregation="only_first_replica"``, and every replica computes the same
    ``u`` anyway), on JAX (the assignment to ``u`` is collected as a
    non-trainable update by the stateless train step) and on PyTorch, with the
    same numbers from the same weights: ``u`` starts from a fixed unit vector
    rather than a backend random draw. The kernel variable keeps the
    unnormalised weights, which the optimizer updates; a kernel regulariser or
    constraint of the wrapped layer applies to those. Under mixed precision the
    power iteration runs in float32 and ``u`` stays float32.

    How accurate: sigma is the paper's estimate, a lower bound that improves as
    ``u`` follows ``W`` from step to step, so ``W / sigma`` has spectral norm
    >= 1, approaching 1. Where the top singular values of ``W`` are close
    (training tends to push them together), one iteration per step lags: in
    the tests, a 10 x 32 kernel after 64 Adam steps has 1.01 to 1.11 with
    ``power_iterations=1`` and <= 1.02 with 10. For a hard bound use
    `keras_reg.constraints.SpectralNorm`.

    Example:
    ```python
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras_reg.layers.SpectralNormalization(keras.layers.Conv2D(32, 3)),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras_reg.layers.SpectralNormalization(keras.layers.Dense(10)),
    ])
    ```

    References:
        T. Miyato, T. Kataoka, M. Koyama, Y. Yoshida, "Spectral Normalization
        for Generative Adversarial Networks", ICLR 2018, arXiv:1802.05957;
        Su Jianlin, "深度学习中的Lipschitz约束：泛化与生成模型" (Lipschitz
        constraints in deep learning), https://kexue.fm/archives/6051 .

    Args:
        layer: The layer to wrap: one with a ``kernel`` or ``embeddings``
            variable.
        power_iterations: Power-iteration steps per training call (>= 1); the
            paper uses 1, relying on the vector carried over between steps.
        **kwargs: Base layer keyword arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, layer, power_iterations=1, **kwargs):
        if (
            isinstance(power_iterations, bool)
            or not isinstance(power_iterations, numbers.Integral)
            or power_iterations < 1
        ):
            raise ValueError(
                "`power_iterations` must be an integer >= 1, received "
                f"power_iterations={power_iterations!r}. The paper uses 1."
            )
        if "dtype" not in kwargs and isinstance(layer, keras.layers.Layer):
            kwargs["dtype"] = layer.dtype_policy
        super().__init__(layer, **kwargs)
        self.power_iterations = int(power_iterations)

    def build(self, input_shape=None):
        super().build(input_shape)
        weight = _weight_of(self.layer)
        size = weight.shape[-1]
        initial = spectral.initial_vector(size)
        self.vector_u = self.add_weight(
            shape=(size,),
            initializer=lambda shape, dtype=None: ops.convert_to_tensor(
                initial, dtype=dtype
            ),
            trainable=False,
            name="vector_u",
            dtype=weight.dtype,
            aggregation="only_first_replica",
            # Not autocast: on torch, assigning to a variable read through an
            # autocast scope (mixed precision) writes into a float16 copy.
            autocast=False,
        )
        self.built = True

    def normalized_weight(self, training=False):
        """Returns ``W / sigma(W)``, updating ``u`` first when ``training``."""
        weight = _weight_of(self.layer)
        value = weight.value  # the compute dtype under mixed precision
        matrix = spectral.as_matrix(spectral.at_least_float32(value))
        stored = self.vector_u.value
        # While W = 0 (e.g. kernel_initializer="zeros") sigma is 0: W is used
        # as it is and u is kept, as Keras's own SpectralNormalization does,
        # instead of dividing by a floor that multiplies the gradient by 1e12.
        nonzero = ops.any(ops.not_equal(ops.stop_gradient(matrix), 0))
        if training:
            u, v = spectral.power_iteration(matrix, stored, self.power_iterations)
            self.vector_u.assign(ops.where(nonzero, ops.cast(u, stored.dtype), stored))
        else:
            u = ops.stop_gradient(ops.cast(stored, matrix.dtype))
            v = ops.stop_gradient(spectral.l2_normalize(ops.matmul(matrix, u)))
        sigma = ops.maximum(spectral.sigma_from_vectors(matrix, u, v), 1e-12)
        sigma = ops.where(nonzero, sigma, ops.ones_like(sigma))
        return value / ops.cast(sigma, value.dtype)

    def call(self, inputs, training=False):
        weight = _weight_of(self.layer)
        normalized = self.normalized_weight(training=bool(training))
        mapping = [
            (variable, normalized if variable is weight else variable.value)
            for variable in self.layer.variables
        ]
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            outputs = self.layer(inputs, training=training)
        # Hand on what the wrapped layer changed or added (other than the
        # substituted kernel): its non-trainable updates and its losses.
        for variable, given in mapping:
            if variable is not weight:
                after = scope.get_current_value(variable)
                if after is not None and after is not given:
                    variable.assign(after)
        for loss in scope.losses:
            self.layer.add_loss(loss)
        # The wrapped layer computes in its own dtype policy; the wrapper's
        # output has this wrapper's compute dtype, as compute_output_spec says.
        return keras.tree.map_structure(
            lambda output: ops.cast(output, self.compute_dtype)
            if keras.backend.is_float_dtype(output.dtype)
            else output,
            outputs,
        )

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "power_iterations": self.power_iterations}
