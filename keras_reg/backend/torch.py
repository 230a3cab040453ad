"""PyTorch backend for Keras 3 models.

Keras's torch train step runs the forward pass eagerly, then calls
``compute_loss`` and ``loss.backward()``. While ``compute_loss`` runs, the
clean forward pass is still in the autograd graph, so the gradient of the
clean loss with respect to the embedding is taken from it with
``torch.autograd.grad(..., retain_graph=True)``: it never touches any
``.grad``, and the graph stays usable for the step's own backward pass (which
``add_clean_loss=True`` needs). A frozen watched variable is made
differentiable for the duration of the step, like a tape's ``watch``.

Perturbed passes substitute values (see `keras_reg.backend.stateless`); the
optimizer then receives in ``.grad`` only the gradients of the loss the
regulariser returns.
"""

import contextlib

import torch

from keras_reg.backend import stateless
from keras_reg.backend.tracking import (
    attach_metric,
    detach_metric,
    quiet_loss_metrics,
    report_loss,
)

__all__ = [
    "Step",
    "attach_metric",
    "detach_metric",
    "quiet_loss_metrics",
    "report_loss",
    "step_scope",
]


class Recorder:
    """Marks a training step in progress (torch records on its own)."""


@contextlib.contextmanager
def step_scope(model, variables, step_args=()):
    """Makes frozen ``variables`` differentiable for the duration of one step.

    Args:
        model: The model being trained (unused here; part of the interface).
        variables: The variables regularisers differentiate with respect to.
        step_args: The positional arguments of ``train_step`` (unused).

    Yields:
        A `Recorder`.
    """
    del model, step_args
    frozen = [v.value for v in variables if not getattr(v.value, "requires_grad", True)]
    for tensor in frozen:
        tensor.requires_grad_(True)
    try:
        yield Recorder()
    finally:
        for tensor in frozen:
            tensor.requires_grad_(False)
            tensor.grad = None


class Step(stateless.Step):
    """`keras_reg.backend.base.Step` for Keras 3 models on PyTorch."""

    def loss_gradient(self, variable):
        loss = self.scale_loss(self.loss)
        (gradient,) = torch.autograd.grad(
            loss, variable.value, retain_graph=True, allow_unused=True
        )
        if gradient is None:
            raise ValueError(
                f"The training loss does not depend on variable {variable.name!r}: "
                "is the layer used by the model's forward pass?"
            )
        return gradient.detach()

    def gradient_of(self, function, value):
        value = torch.as_tensor(value).detach().requires_grad_(True)
        with torch.enable_grad():
            result = function(value)
            (gradient,) = torch.autograd.grad(result, value)
        return gradient.detach()
