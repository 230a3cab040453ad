"""Per-task gradients at a shared layer's output, and the min-norm combination.

The gradient methods of `keras_reg.training.multitask.balancing`: Su Jianlin's part 2
(https://kexue.fm/archives/8896) bounds the gradient with respect to the
shared weights by the one with respect to the shared representation h, which
costs one forward and backward pass per task.
"""

from keras_reg._compat import keras
from keras_reg.backend import keras_internals, task_losses

ops = keras.ops

FRANK_WOLFE_STEPS = 25


def inverse(norm):
    """Returns 1 / norm, 0 where the norm is 0 (a task with nothing to learn)."""
    norm = ops.cast(norm, "float32")
    return ops.where(norm > 0, 1.0 / ops.maximum(norm, 1e-30), ops.zeros_like(norm))


def upstream_layers(tensor):
    """Returns the ids of the layers a symbolic tensor is computed from.

    Walks a functional model's graph (`keras_reg.backend.keras_internals`
    gives the layer call that made a symbolic tensor, and that call's inputs).
    """
    found, stack, seen = set(), [tensor], set()
    while stack:
        current = stack.pop()
        made_by = keras_internals.producing_layer(current)
        if made_by is None or id(current) in seen:
            continue
        seen.add(id(current))
        layer, node_index = made_by
        found.add(id(layer))
        stack.extend(keras_internals.node_input_tensors(layer, node_index))
    return found


def check_upstream_of_outputs(model, layer):
    """Raises unless ``layer`` is upstream of every output of a functional model.

    A head's loss that does not read the shared layer's output has gradient 0
    there: MGDA would give its task weight 0 (or fail). Subclassed models,
    whose graph is not declared, are not checked.

    Raises:
        ValueError: Naming the outputs that do not read the layer, and the
            layers every output reads.
    """
    outputs = keras_internals.leaves(getattr(model, "outputs", None) or [])
    made_by = [keras_internals.producing_layer(o) for o in outputs]
    if len(outputs) < 2 or any(m is None for m in made_by):
        return
    upstream = [upstream_layers(output) for output in outputs]
    missing = [
        getattr(layer_, "name", repr(output))
        for output, (layer_, _), found in zip(outputs, made_by, upstream)
        if id(layer) not in found
    ]
    if not missing:
        return
    common = set.intersection(*upstream)
    shared = [
        other.name
        for other in model.layers
        if id(other) in common and other.weights
    ]
    raise ValueError(
        f"shared_layer={layer.name!r} is not upstream of every task's output: "
        f"output(s) {', '.join(map(repr, missing))} do not read it, so their "
        "loss has no gradient there and the balancing would weigh them 0. "
        "Name the last layer every head reads"
        + (f": one of {', '.join(map(repr, shared))}." if shared else ".")
    )


def representation_gradients(step, layer_name, count):
    """Returns grad_h L_i for each task i, h the shared layer's output (constants).

    One inference-mode forward pass finds h; then, for each task, a pass with
    h + delta and the gradient of that task's loss at delta = 0 (dropout off,
    BatchNormalization on its moving statistics, nothing written).
    """
    model = step.model
    layer = model.get_layer(layer_name)
    seen = {}

    def capture(output, inputs):
        del inputs
        seen["h"] = output
        return output

    step.forward(step.x, training=False, layer=layer, transform=capture)
    zero = ops.zeros(ops.shape(seen["h"]), "float32")

    def task_loss(index):
        def loss(delta):
            def shifted(output, inputs):
                del inputs
                return output + ops.cast(delta, output.dtype)

            y_pred = step.forward(
                step.x, training=False, layer=layer, transform=shifted
            )
            values = task_losses.task_losses(model, step.y, y_pred, step.sample_weight)
            return ops.cast(values.values[index], "float32")

        return loss

    return [step.gradient_of(task_loss(i), zero) for i in range(count)]


def min_norm_weights(gradients, steps=FRANK_WOLFE_STEPS, reduce=None):
    """Returns a on the simplex minimising ||sum_i a_i g_i|| (Frank-Wolfe).

    Each iteration moves towards the vertex e_t with the smallest
    <g_t, sum_i a_i g_i>, by the exact line search on the segment.

    Args:
        gradients: A list of tensors of one shape.
        steps: Frank-Wolfe iterations.
        reduce: Optional ``reduce(gram) -> gram``: the sum over replicas of
            the inner products, where each holds its shard's rows of the
            gradients (`keras_reg.backend.base.Step.global_sum`).

    Returns:
        A float32 vector of ``len(gradients)`` weights summing to 1.
    """
    flat = ops.stack(
        [ops.reshape(ops.cast(g, "float32"), (-1,)) for g in gradients], axis=0
    )
    gram = ops.matmul(flat, ops.transpose(flat))
    if reduce is not None:
        gram = reduce(gram)
    count = len(gradients)
    weights = ops.ones((count,), "float32") / count
    diagonal = ops.diagonal(gram)
    for _ in range(steps):
        products = ops.matmul(gram, weights)
        vertex = ops.argmin(products)
        a = ops.sum(weights * products)  # ||v||^2
        b = ops.take(products, vertex)  # <v, g_t>
        c = ops.take(diagonal, vertex)  # ||g_t||^2
        denominator = a + c - 2.0 * b
        move = ops.where(
            denominator > 0,
            ops.clip((a - b) / ops.maximum(denominator, 1e-30), 0.0, 1.0),
            0.0,
        )
        weights = (1.0 - move) * weights + move * ops.one_hot(vertex, count)
    return weights
