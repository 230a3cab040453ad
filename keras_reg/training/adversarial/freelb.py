"""FreeLB: adversarial training on the embedded sequence, gradients averaged.

References:
    Zhu, Cheng, Gan, Sun, Goldstein, Liu. FreeLB: Enhanced Adversarial Training
    for Natural Language Understanding. ICLR 2020.
    https://arxiv.org/abs/1909.11764 (code: github.com/zhuchen03/FreeLB)
"""

from keras_reg._compat import keras
from keras_reg.training.adversarial.common import (
    check_embedding_and_loss,
    embedding_name_argument,
)
from keras_reg.training.core import relative, schedule
from keras_reg.training.core.embedding import find_embedding_layer
from keras_reg.training.core.export import export
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.training.core.relative import example_norms
from keras_reg.validation import integer_argument, non_negative_number

ops = keras.ops


@export("freelb")
class FreeLB(TrainingRegularizer):
    """FreeLB (Zhu et al. ICLR 2020) on an embedding layer's output.

    The perturbation delta is added to the embedded sequence (the layer's
    output: one vector per token occurrence), with one norm per example
    (over its positions and dimensions). With L(delta) the batch's training
    loss with delta added and K = ``steps``:

        delta_0 = U(-1, 1) * init_scale / sqrt(positions * dim)   (0 if init_scale=0)
        for t = 1..K:  L_t = L(delta_{t-1});  g_t = dL_t / d delta_{t-1}
                       delta_t = P(delta_{t-1} + alpha * g_t / ||g_t||)  (per example)

    with P the projection of each example's delta onto ``||delta_i|| <=
    epsilon``; the optimizer applies the gradients of ``(L_1 + ... + L_K) / K``
    with respect to all weights: the mean over the K passes of the parameter
    gradients, as the paper's Algorithm 1. An example with a zero or
    non-finite g_t is not moved.

    Where this differs from the authors' code, and why: the random start
    covers every position (their code masks padding with the attention mask,
    which a Keras model does not expose to a regulariser); each pass is an
    ordinary training pass (the paper's Section 3.2 reuses one dropout mask
    across the K passes: on TensorFlow every pass draws its own, on JAX and
    PyTorch the ascent passes share one); epsilon is always enforced (their
    ``adv_max_norm=0`` turns the projection off: pass a large epsilon). With
    ``init_scale=0`` (the default) L_1 is the step's own clean pass, so the
    step costs K - 1 extra forward passes and K - 1 backward passes to the
    embedding outputs besides the step's own backward pass.

    Args:
        embedding_name: Name of the embedding layer, e.g. ``'Embedding-Token'``.
        epsilon: Bound of each example's perturbation norm, or a schedule of
            the step (see `keras_reg.training.core.schedule`), or
            ``keras_reg.relative(r)``: each example's bound is ``r * ||e_i||``,
            e_i its embedded sequence (all its lookups; see
            `keras_reg.training.core.relative`).
        alpha: Norm of each example's ascent step; relative like ``epsilon``.
        steps: K, the number of passes (>= 1; 1 with ``init_scale=0`` is plain
            training).
        init_scale: Scale of the random start (the authors' ``adv_init_mag``).
        seed: Seed of the random start.

    Example:
        >>> keras_reg.freelb(model, "Embedding-Token", epsilon=1.0, alpha=0.3)
    """

    def __init__(
        self, embedding_name, epsilon=1.0, alpha=0.3, steps=3, init_scale=0.0, seed=None
    ):
        self.embedding_name = embedding_name_argument(embedding_name)
        self.epsilon = relative.strength("epsilon", epsilon, example=1.0)
        self.alpha = relative.strength("alpha", alpha, example=0.3, squared=False)
        self.steps = integer_argument("steps", steps, minimum=1, example=3)
        self.init_scale = non_negative_number("init_scale", init_scale, example=0.1)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def validate(self, model):
        check_embedding_and_loss(self, model)

    def required_layers(self, model):
        return [(find_embedding_layer(model, self.embedding_name), True)]

    def logged_terms(self):
        return ("adversarial_loss",)

    def watched_outputs(self, model):
        return [find_embedding_layer(model, self.embedding_name)]

    def regularized_loss(self, step):
        layer = find_embedding_layer(step.model, self.embedding_name)
        # A relative strength: per example, times its embedded sequence's norm.
        epsilon, alpha = relative.currents(
            step,
            (self.epsilon, self.alpha),
            lambda: example_norms(step.lookup_outputs(layer)),
        )
        shapes = step.lookup_shapes(layer)
        if self.init_scale:
            deltas = [self._random_start(shape, step) for shape in shapes]
        else:
            deltas = [ops.zeros(shape, "float32") for shape in shapes]
        losses = []
        for t in range(self.steps):
            last = t == self.steps - 1
            if t == 0 and not self.init_scale:
                if not last:
                    gradients = [
                        ops.stop_gradient(g) for g in step.output_gradients(layer)
                    ]
                loss = step.clean_loss()
            elif last:
                loss = step.training_loss(layer=layer, transform=_adder(deltas))
            else:
                loss, gradients = step.value_and_gradient(
                    _perturbed_loss(step, layer), deltas
                )
            losses.append(loss)
            if not last:
                deltas = _ascend(deltas, gradients, alpha, epsilon)
        step.log("adversarial_loss", losses[-1])
        total = losses[0]
        for loss in losses[1:]:
            total = total + loss
        return total / self.steps

    def _random_start(self, shape, step):
        seed = step.seed(self.generator)
        # Each replica keeps its rows of one global draw: one device's start.
        start = step.draw_per_example(
            lambda global_shape: step.uniform(global_shape, seed, -1.0, 1.0),
            shape,
        )
        size = 1
        for n in shape[1:]:
            size = size * n
        return start * (self.init_scale / ops.sqrt(ops.cast(size, "float32")))

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "epsilon": schedule.serialize(self.epsilon),
            "alpha": schedule.serialize(self.alpha),
            "steps": self.steps,
            "init_scale": self.init_scale,
            "seed": self.seed,
        }


def _perturbed_loss(step, layer):
    """``deltas -> (scaled loss, loss)`` of a pass with the deltas added.

    One forward and one backward pass per ascent step: the loss stays
    differentiable with respect to the weights (the step averages the losses),
    the gradient with respect to the deltas is of the scaled loss.
    """

    def objective(deltas):
        loss = step.training_loss(layer=layer, transform=_adder(deltas))
        return step.scale_loss(loss), loss

    return objective


def _adder(deltas):
    """A transform adding ``deltas[i]`` to the i-th lookup of the layer in a pass."""
    pending = list(deltas)

    def add(output, inputs):
        if len(output.shape) != len(inputs.shape) + 1:
            return output  # not a lookup (bert4keras's output head)
        if not pending:
            raise ValueError(
                "The embedding layer was called more often in a FreeLB pass than "
                "in the step's own forward pass; FreeLB needs the same calls."
            )
        return output + ops.cast(pending.pop(0), output.dtype)

    return add


def _per_example(scale, tensor):
    """``scale`` (batch,) broadcast against ``tensor`` (batch, ...)."""
    return ops.reshape(scale, (-1,) + (1,) * (len(tensor.shape) - 1))


def _ascend(deltas, gradients, alpha, epsilon):
    """One FreeLB ascent step, then the per-example projection."""
    norm = example_norms(gradients)
    usable = ops.logical_and(ops.isfinite(norm), norm > 0)
    step = ops.where(usable, ops.divide_no_nan(alpha, norm), 0.0)
    moved = []
    for delta, gradient in zip(deltas, gradients):
        gradient = ops.where(
            _per_example(usable, gradient), ops.cast(gradient, "float32"), 0.0
        )
        moved.append(delta + _per_example(step, gradient) * gradient)
    norm = example_norms(moved)
    shrink = ops.where(norm > epsilon, ops.divide_no_nan(epsilon, norm), 1.0)
    return [delta * _per_example(shrink, delta) for delta in moved]
