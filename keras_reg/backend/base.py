"""The interface a regulariser sees inside one training step, on every backend."""

import abc

from keras_reg.training.interception import transformed_output


class Step(abc.ABC):
    """One training step, as seen by a `keras_reg.training.TrainingRegularizer`.

    The compiled model has just run its ordinary forward pass on the batch and
    computed ``loss`` (the compiled loss with sample weights, plus the model's
    regularisation losses). A regulariser returns the loss the optimizer should
    differentiate instead, using the primitives below; the backend guarantees
    that every perturbation is undone exactly (by copying saved values back,
    never by subtracting) before the optimizer updates the weights.

    Attributes:
        model: The model being trained.
        x: The batch's inputs.
        y: The batch's targets.
        sample_weight: The batch's sample weights, or None.
        loss: The ordinary (clean) training loss of the batch.
    """

    def __init__(self, model, recorder, x, y, sample_weight, loss, compute_loss):
        self.model = model
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.loss = loss
        self._recorder = recorder
        self._compute_loss = compute_loss

    @abc.abstractmethod
    def gradient(self, loss, variable):
        """Returns d loss / d variable, sparse where the framework makes it sparse.

        Args:
            loss: A scalar computed in this step from the clean forward pass.
            variable: A variable that the regulariser declared as watched.
        """

    @abc.abstractmethod
    def scale_loss(self, loss):
        """Returns ``loss`` times the optimizer's loss scale (mixed precision)."""

    @abc.abstractmethod
    def scale_to_norm(self, gradient, epsilon):
        """Returns ``epsilon * gradient / ||gradient||_F`` (0 where the norm is 0).

        The norm is taken over the whole tensor. For a sparse gradient, repeated
        rows are summed first, so the result equals the dense computation.
        """

    @abc.abstractmethod
    def loss_with_perturbation(self, layer, variable, perturbation):
        """Returns the training loss of the batch with ``variable + perturbation``.

        Runs a second training-mode forward pass with ``layer``'s ``variable``
        perturbed, leaving the variable as it was, bit for bit, when it returns.
        The returned loss is differentiable with respect to every trainable
        weight, at the perturbed point; ``perturbation`` is a constant.
        """

    @abc.abstractmethod
    def gradient_of(self, function, value):
        """Returns d function(value) / d value, a dense tensor shaped like ``value``.

        Used by power iterations (VAT); the result is a constant for the
        step's own gradient.
        """

    def forward(self, x, training=False, layer=None, transform=None):
        """Returns the model's output on ``x``, optionally transforming a layer's.

        Args:
            x: Model inputs.
            training: Run in training mode (dropout on) or inference mode.
            layer: A layer whose output ``transform(output, inputs)`` replaces.
            transform: See ``layer``.
        """
        if layer is None:
            return self.model(x, training=training)
        with transformed_output(layer, transform):
            return self.model(x, training=training)
