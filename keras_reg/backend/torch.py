"""PyTorch backend for Keras 3 models.

Keras's torch train step runs the forward pass eagerly, then calls
``compute_loss`` and ``loss.backward()``. While ``compute_loss`` runs, the
clean forward pass is still in the autograd graph, so the gradient of the
clean loss with respect to the embedding is taken from it with
``torch.autograd.grad(..., retain_graph=True)``: it never touches any
``.grad``, and the graph stays usable for the step's own backward pass (which
``add_clean_loss=True`` needs). A frozen watched variable is made
differentiable for the duration of the step, like a tape's ``watch``. For a
plain lookup layer the gradient is taken with respect to its recorded lookup
outputs instead (one row per token occurrence, summed per id by
`Step.matrix_gradient`): PyTorch's gradient of the matrix itself is dense.

Perturbed passes substitute values (see `keras_reg.backend.stateless`); the
optimizer then receives in ``.grad`` only the gradients of the loss the
regulariser returns.
"""

import contextlib

import torch

from keras_reg._compat import keras
from keras_reg.backend import base, stateless
from keras_reg.backend import rows as sparse_rows
from keras_reg.backend.interception import transformed_output
from keras_reg.backend.tracking import (
    attach_metric,
    attach_state,
    detach_metric,
    detach_state,
    quiet_loss_metrics,
    report_loss,
)

__all__ = [
    "Step",
    "attach_metric",
    "attach_state",
    "detach_metric",
    "detach_state",
    "quiet_loss_metrics",
    "report_loss",
    "step_scope",
]


class Recorder:
    """The layer outputs a training step watches (torch records on its own).

    Attributes:
        outputs: Layer id -> the outputs of that layer's lookups
            (`base.is_lookup`) in the step's forward pass.
        lookups: Layer id -> ``(ids, output)`` of each lookup of a layer
            whose matrix gradient may be taken as rows
            (`Step.matrix_gradient`).
    """

    def __init__(self, layers=(), lookups=()):
        self.outputs = {id(layer): [] for layer in layers}
        self.lookups = {id(layer): [] for layer in lookups}
        self.inputs = []
        # Only the step's own forward pass is recorded (the Step stops it).
        self.capturing = True

    def capture(self, layer):
        """Returns a `transformed_output` transform keeping the layer's output."""
        outputs = self.outputs[id(layer)]

        def keep(output, inputs):
            if self.capturing and base.is_lookup(output, inputs):
                if not output.requires_grad:  # a frozen embedding
                    output = output.detach().requires_grad_(True)
                outputs.append(output)
            return output

        return keep

    def record(self, layer):
        """Returns a `transformed_output` transform keeping a lookup's ids, output."""
        lookups = self.lookups[id(layer)]

        def keep(output, inputs):
            if self.capturing and base.is_lookup(output, inputs):
                lookups.append((inputs, output))
            return output

        return keep


@contextlib.contextmanager
def step_scope(
    model,
    variables,
    step_args=(),
    layers=(),
    inputs=False,
    several=False,
    lookups=(),
):
    """Makes frozen ``variables`` differentiable for the duration of one step.

    Args:
        model: The model being trained (unused here; part of the interface).
        variables: The variables regularisers differentiate with respect to.
        step_args: The positional arguments of ``train_step`` (unused).
        layers: Layers whose lookup outputs regularisers differentiate with
            respect to.
        inputs: Make the batch's float inputs differentiable
            (`Step.input_gradients`).
        several: Whether several regularisers share the step (unused: the
            graph may be read any number of times).
        lookups: Embedding layers whose lookups' ids and outputs are kept,
            for their matrix's gradient as rows (`Step.matrix_gradient`).

    Yields:
        A `Recorder`.
    """
    del model, several
    frozen = [v.value for v in variables if not getattr(v.value, "requires_grad", True)]
    for tensor in frozen:
        tensor.requires_grad_(True)
    recorder = Recorder(layers, lookups)
    if inputs and step_args:
        x, _, _ = keras.utils.unpack_x_y_sample_weight(step_args[-1])
        recorder.inputs = [
            t.requires_grad_(True)
            for t in keras.tree.flatten(x)
            if torch.is_tensor(t) and torch.is_floating_point(t)
        ]
    try:
        with contextlib.ExitStack() as stack:
            for layer in layers:
                stack.enter_context(transformed_output(layer, recorder.capture(layer)))
            # After `capture`: the output it hands on is the one differentiated.
            for layer in lookups:
                stack.enter_context(transformed_output(layer, recorder.record(layer)))
            yield recorder
    finally:
        for tensor in frozen:
            tensor.requires_grad_(False)
            tensor.grad = None


class Step(stateless.Step):
    """`keras_reg.backend.base.Step` for Keras 3 models on PyTorch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._recorder.capturing = False
        self._taken = {}  # id(variable) -> constant d (scaled loss) / d it

    def loss_gradients(self, variables, differentiable=False):
        if differentiable:
            return list(self._gradients(variables, differentiable=True))
        # Constant gradients are taken once per variable in the step: the
        # members of a composition share them.
        missing = [v for v in variables if id(v) not in self._taken]
        if missing:
            gradients = self._gradients(missing, differentiable=False)
            self._taken.update(
                (id(v), None if g is None else g.detach())
                for v, g in zip(missing, gradients)
            )
        return [self._taken[id(v)] for v in variables]

    def _gradients(self, variables, differentiable):
        return torch.autograd.grad(
            self.scale_loss(self.loss),
            [v.value for v in variables],
            create_graph=differentiable,
            retain_graph=True,
            allow_unused=True,
        )

    def lookup_shapes(self, layer):
        outputs = self._recorder.outputs.get(id(layer)) or [
            output for _, output in self._recorder.lookups.get(id(layer), [])
        ]
        if not outputs:
            raise ValueError(base.NO_LOOKUP.format(name=layer.name))
        return [tuple(output.shape) for output in outputs]

    def _clean_lookup_gradients(self, layer, variables=()):
        """Read off the step's own pass: its recorded lookups, one backward pass."""
        lookups = self._recorder.lookups.get(id(layer))
        if not lookups:
            return None  # not recorded (a custom step): the dense gradient
        outputs = [output for _, output in lookups]
        gradients = torch.autograd.grad(
            self.scale_loss(self.loss),
            outputs + [v.value for v in variables],
            retain_graph=True,
            allow_unused=True,
        )
        gradients = [None if g is None else g.detach() for g in gradients]
        ids = [ids for ids, _ in lookups]
        at_outputs = [
            torch.zeros_like(o) if g is None else g
            for g, o in zip(gradients, outputs)
        ]
        if not variables:
            return ids, at_outputs
        return ids, at_outputs, gradients[len(outputs) :]

    def _penalty_lookup_gradients(self, layer):
        lookups = self._recorder.lookups.get(id(layer))
        if not lookups:
            return None
        gradients = self._differentiable([output for _, output in lookups])
        at_outputs = [
            torch.zeros_like(o) if g is None else g
            for g, (_, o) in zip(gradients, lookups)
        ]
        return [ids for ids, _ in lookups], at_outputs

    def lookup_outputs(self, layer):
        self.lookup_shapes(layer)  # a clear error without a lookup
        return [o.detach() for o in self._recorder.outputs[id(layer)]]

    def output_gradients(self, layer, of=None):
        outputs = self._recorder.outputs[id(layer)]
        if not outputs:
            raise ValueError(base.NO_LOOKUP.format(name=layer.name))
        if of is not None:
            return self._graph_gradients(of(self.y_pred), outputs)
        return self._differentiable(outputs)

    def input_gradients(self, of):
        return self._graph_gradients(of(self.y_pred), self._recorder.inputs)

    def _graph_gradients(self, value, tensors):
        return list(
            torch.autograd.grad(
                value, tensors, create_graph=True, retain_graph=True, allow_unused=True
            )
        )

    def _differentiable(self, tensors):
        """Gradients of the clean loss w.r.t. ``tensors``, kept in the graph."""
        loss = self.scale_loss(self.loss)
        gradients = torch.autograd.grad(
            loss, tensors, create_graph=True, retain_graph=True, allow_unused=True
        )
        factor = self.scale_loss(torch.ones((), device=loss.device))
        return [None if g is None else g / factor for g in gradients]

    def value_and_gradient(self, function, wrt):
        single = not isinstance(wrt, (list, tuple))
        leaves = [wrt] if single else list(wrt)
        variables = [isinstance(leaf, keras.Variable) for leaf in leaves]
        sources = [
            leaf.value
            if is_variable
            else torch.as_tensor(leaf).detach().requires_grad_(True)
            for leaf, is_variable in zip(leaves, variables)
        ]
        given = [
            leaf if is_variable else source
            for leaf, source, is_variable in zip(leaves, sources, variables)
        ]
        with torch.enable_grad():
            objective, value = function(given[0] if single else given)
            gradients = torch.autograd.grad(
                objective, sources, retain_graph=True, allow_unused=True
            )
        gradients = [
            g.detach()
            if g is not None
            else (None if is_variable else torch.zeros_like(source))
            for g, source, is_variable in zip(gradients, sources, variables)
        ]
        return value, gradients[0] if single else gradients

    def frobenius_norm(self, value):
        return torch.linalg.vector_norm(value.to(torch.float32))

    def unscaled(self, gradient):
        if gradient is None:
            return None
        return sparse_rows.map_values(
            lambda g: g / self.scale_loss(torch.ones((), device=g.device)), gradient
        )
