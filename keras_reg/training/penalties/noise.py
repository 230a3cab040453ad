"""Training with Gaussian noise, and the gradient penalty it amounts to.

Adding noise eps ~ N(0, sigma^2 I) to the inputs x (or to the embedded
sequence) of a loss l(f(x)) gives, to second order,

    E_eps l(f(x + eps)) ~ l(f(x)) + (sigma^2 / 2) tr(J^T H J)

with J the Jacobian of the outputs w.r.t. x and H the Hessian of l w.r.t. the
outputs (the Gauss-Newton part of the curvature; the part with second
derivatives of f is dropped). For Keras's losses:

- cross-entropy on class probabilities p (softmax or one sigmoid unit, given
  as probabilities or logits): H = diag(p) - p p^T on the logits, whatever
  the label, so tr(J^T H J) = sum_k p_k ||grad_x log p_k||^2 (the trace of
  the Fisher information);
- mean squared error over K outputs: H = (2 / K) I, so
  tr(J^T H J) = (2 / K) sum_k ||grad_x f_k||^2.

Either sum needs one gradient per output; one random +-1 projection of the
outputs (`keras_reg.training.core.projection`) estimates it without bias from one
extra gradient per step. Per example, averaged over the batch like Keras's
losses (sample weights included).

References:
    Bishop. Training with Noise is Equivalent to Tikhonov Regularization.
    Neural Computation 1995.

    Su Jianlin. 泛化性乱弹：从随机噪声、梯度惩罚到虚拟对抗训练 (On
    generalisation: from random noise and gradient penalty to VAT).
    https://kexue.fm/archives/7466
"""

from keras_reg._compat import keras
from keras_reg.training.core import projection, relative, schedule
from keras_reg.training.core.divergence import loss_family, loss_name
from keras_reg.training.core.embedding import find_embedding_layer
from keras_reg.training.core.export import export
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.validation import boolean, require_loss

ops = keras.ops


@export("noise_training")
class NoiseTraining(TrainingRegularizer):
    """Gaussian noise on the embedded sequence or the inputs, or its penalty.

    With ``integrated=False`` the step's loss is that of a training pass whose
    embedding outputs (``embedding_name``) or float inputs (None) have
    N(0, stddev^2) noise added, a fresh draw every step; metrics stay those of
    the clean pass. With ``integrated=True`` no noise is added: the step trains
    on ``L + (stddev^2 / 2) * tr(J^T H J)`` (see the module docstring),
    estimated with one random +-1 projection of the outputs per step and
    differentiated through (double backprop). It supports single-output models
    compiled with a cross-entropy loss (one softmax, or one sigmoid unit) or
    mean squared error.

    Args:
        embedding_name: The embedding layer whose output gets the noise, or
            None for the model's float inputs.
        stddev: Standard deviation of the noise, or a schedule of the step
            (see `keras_reg.training.core.schedule`), or
            ``keras_reg.relative(r)``: ``r`` times the root mean square entry
            of the noised tensor in the step (the batch's float input, or its
            embedded sequence): a noise-to-signal ratio (see
            `keras_reg.training.core.relative`).
        integrated: Train on the second-order penalty instead of noisy passes.
        seed: Seed of the noise (or of the projections' signs).

    Example:
        >>> keras_reg.noise_training(model, "Embedding-Token", stddev=0.1)
        >>> keras_reg.noise_training(model, None, stddev=0.1, integrated=True)
    """

    def __init__(self, embedding_name=None, stddev=0.1, integrated=False, seed=None):
        if embedding_name is not None and (
            not isinstance(embedding_name, str) or not embedding_name
        ):
            raise ValueError(
                "`embedding_name` must be the name of an embedding layer or None "
                f"(the float inputs), received embedding_name={embedding_name!r}."
            )
        self.embedding_name = embedding_name
        self.stddev = relative.strength("stddev", stddev, example=0.1)
        self.integrated = boolean("integrated", integrated)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def validate(self, model):
        require_loss("NoiseTraining", model)
        if self.embedding_name is not None:
            find_embedding_layer(model, self.embedding_name)
        else:
            _check_float_inputs(model, type(self).__name__)
        if self.integrated and loss_family(model) is None:
            raise ValueError(
                f"NoiseTraining(integrated=True) needs a single-output model "
                "compiled with a cross-entropy loss (softmax or one sigmoid unit) "
                f"or mean squared error; model {model.name!r} has loss "
                f"{getattr(model, 'loss', None)!r}. Use integrated=False (noisy "
                "passes), which works with any loss."
            )

    def logged_terms(self):
        return ("noise_penalty",) if self.integrated else ()

    def watched_outputs(self, model):
        if self.integrated and self.embedding_name is not None:
            return [find_embedding_layer(model, self.embedding_name)]
        return []

    def required_layers(self, model):
        if self.embedding_name is None:
            return []
        return [(find_embedding_layer(model, self.embedding_name), True)]

    def watches_inputs(self, model):
        return self.integrated and self.embedding_name is None

    def regularized_loss(self, step):
        if self.integrated:
            return self._penalized_loss(step)
        if self.embedding_name is None:
            noisy = keras.tree.map_structure(
                lambda t: self._noisy(t, step) if _is_float(t) else t, step.x
            )
            return step.training_loss(x=noisy)
        layer = find_embedding_layer(step.model, self.embedding_name)

        def add_noise(output, inputs):
            if len(output.shape) != len(inputs.shape) + 1:
                return output  # not a lookup (bert4keras's output head)
            return self._noisy(output, step)

        return step.training_loss(layer=layer, transform=add_noise)

    def _noisy(self, value, step):
        seed = step.seed(self.generator)
        stddev = relative.current(
            step, self.stddev, lambda: relative.root_mean_square(step, [value])
        )
        noise = step.draw_per_example(
            lambda shape: step.normal(shape, seed) * stddev,
            ops.shape(value),
        )
        return value + ops.cast(noise, value.dtype)

    def _penalized_loss(self, step):
        family = loss_family(step.model)
        y_pred = keras.tree.flatten(step.y_pred)[0]
        if family != "squared_error" and _is_multilabel(step.model, y_pred):
            raise ValueError(
                "NoiseTraining(integrated=True) reads a sigmoid output as one "
                "Bernoulli unit; this model has several sigmoid units under a "
                "binary cross-entropy. Use integrated=False."
            )
        seed = step.seed(self.generator)

        def projected(outputs):
            outputs = keras.tree.flatten(outputs)[0]
            if family == "squared_error":
                return projection.squared_error_projection(
                    outputs, seed, step.sample_weight, step
                )
            return projection.fisher_projection(
                outputs, family, seed, step.sample_weight, step
            )

        layer = None
        if self.embedding_name is None:
            gradients = step.input_gradients(projected)
        else:
            layer = find_embedding_layer(step.model, self.embedding_name)
            gradients = step.output_gradients(layer, of=projected)

        def noised():  # what the noise would be added to (a relative stddev)
            if layer is not None:
                return step.lookup_outputs(layer)
            return [t for t in keras.tree.flatten(step.x) if _is_float(t)]

        # Per-example gradients of this replica's shard: sum over the replicas,
        # divide by the global batch size.
        batch = ops.cast(ops.shape(y_pred)[0] * step.replicas(), "float32")
        squared = step.global_sum(sum(step.squared_norm(g) for g in gradients))
        stddev = relative.current(
            step, self.stddev, lambda: relative.root_mean_square(step, noised())
        )
        penalty = squared * stddev * stddev * 0.5 / batch
        step.log("noise_penalty", penalty)
        return step.loss_plus(penalty)

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "stddev": schedule.serialize(self.stddev),
            "integrated": self.integrated,
            "seed": self.seed,
        }


def _is_float(tensor):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(tensor.dtype))


def _is_multilabel(model, y_pred):
    """Several sigmoid units under a binary cross-entropy."""
    return loss_name(model) == "binary_crossentropy" and y_pred.shape[-1] not in (
        None,
        1,
    )


def _check_float_inputs(model, name):
    """Raises if the model's declared inputs are all integer (token ids)."""
    inputs = getattr(model, "inputs", None) or []
    dtypes = [keras.backend.standardize_dtype(t.dtype) for t in inputs]
    if dtypes and not any(keras.backend.is_float_dtype(d) for d in dtypes):
        raise ValueError(
            f"{name} on the inputs needs float inputs, but model {model.name!r} "
            f"takes {', '.join(dtypes)} (token ids?). Pass the embedding layer's "
            f"name instead, e.g. {name}('Embedding-Token', ...), to act on the "
            "embedded sequence."
        )
