"""Base class of the regularisers that act inside a training step."""

import abc

import numpy as np

from keras_reg._compat import keras
from keras_reg.training.core import schedule


class _GeneratorState:
    """A pickled `keras.random.SeedGenerator`: its seed and current state."""

    def __init__(self, generator):
        self.seed = generator.get_config()["seed"]
        self.state = np.array(keras.ops.convert_to_numpy(generator.state.value))

    def generator(self):
        generator = keras.random.SeedGenerator(self.seed)
        generator.state.assign(self.state.astype(generator.state.dtype))
        return generator


class PicklableSeeds:
    """Pickling and deep copying for an object holding `keras.random.SeedGenerator`s.

    A generator holds the backend module, which does not pickle. A seed is
    data: each generator attribute is pickled as its seed and current state,
    and rebuilt from them, so a copy draws what the original would draw next.
    """

    def __getstate__(self):
        return {
            name: _GeneratorState(value)
            if isinstance(value, keras.random.SeedGenerator)
            else value
            for name, value in self.__dict__.items()
        }

    def __setstate__(self, state):
        self.__dict__.update(
            {
                name: value.generator() if isinstance(value, _GeneratorState) else value
                for name, value in state.items()
            }
        )


class TrainingRegularizer(PicklableSeeds, abc.ABC):
    """A regulariser that changes the loss a compiled model trains on.

    Subclasses implement `regularized_loss`, which receives the step's clean
    loss and backend primitives (`keras_reg.backend.base.Step`) and returns the
    loss to differentiate. They are configured by plain arguments and round-trip
    through `get_config` / `from_config`, like Keras regularisers.

    Install one with `keras_reg.install_regularizer` (or the public helpers such
    as `keras_reg.adversarial_training`); remove it with
    `keras_reg.remove_regularization`. Several compose (`keras_reg.compose`).

    Attributes:
        weight_space: Whether the regulariser moves the weights and
            differentiates the loss there (SAM, AWP): in a composition it
            wraps the other members' loss, and a composition holds at most one.
        balances_tasks: Whether it re-weights the per-output losses (a
            composition holds at most one).
    """

    weight_space = False
    balances_tasks = False

    def validate(self, model):
        """Checks, at install time, that ``model`` suits this regulariser.

        Raises:
            ValueError: The model lacks what the regulariser needs; the
                message names it and the fix.
        """
        del model

    def logged_terms(self):
        """Returns the names of the terms the regulariser logs with ``step.log``.

        Each appears in ``fit``'s logs and progress bar (e.g. ``vat_loss``),
        averaged over the epoch, on every framework.
        """
        return ()

    def carried_state(self, model):
        """Returns ``{name: shape}`` of the float32 state kept between steps.

        A value may also be ``(shape, dtype)`` for a state of another dtype
        (FreeFGM's carried row indices are int32).

        Each becomes a zero variable when the regulariser is installed, read
        and assigned in the step with ``step.state(name)``; it is not saved with
        the model's weights (FreeFGM's previous gradient).
        """
        del model
        return {}

    def check_states(self, model, states, warned):
        """Checks, on the host at the end of every epoch, what the step recorded.

        Args:
            model: The model being trained.
            states: ``{name: NumPy value}`` of the `carried_state` variables.
            warned: The installation's set of what was already warned about:
                add a key to it to warn only once per installation.
        """
        del model, states, warned

    def watched_variables(self, model):
        """Returns the variables whose clean-loss gradient the step must record."""
        del model
        return []

    def watched_outputs(self, model):
        """Returns the layers whose lookup outputs the step must record.

        For `keras_reg.backend.base.Step.output_gradients`.
        """
        del model
        return []

    def required_layers(self, model):
        """Returns ``(layer, lookup)`` pairs the step's forward pass must call.

        A named layer the forward pass never calls would make the regulariser
        a silent no-op: the step is refused with an error naming the layer
        instead. With ``lookup`` the call must map ids to vectors (an
        embedding lookup), see `keras_reg.backend.base.is_lookup`.
        """
        del model
        return []

    def row_lookups(self, model):
        """Returns the embedding layers whose matrix gradient may be taken as rows.

        The step keeps those layers' lookups (their ids and outputs), so that
        `keras_reg.backend.base.Step.matrix_gradient` and
        `~keras_reg.backend.base.Step.matrix_loss_gradients` can give the
        gradient of a plain lookup's matrix as the batch's rows. Unlike
        `required_layers`, a layer here that the forward pass does not call
        is not an error (its gradient is then taken dense). Default: the
        layers `required_layers` requires as lookups.
        """
        return [layer for layer, lookup in self.required_layers(model) if lookup]

    def watches_inputs(self, model):
        """Whether the step must record gradients w.r.t. the batch's float inputs.

        For `keras_reg.backend.base.Step.input_gradients`.
        """
        del model
        return False

    def on_epoch_begin(self, epoch):
        """Told the epoch by `keras_reg.callbacks.RegularizationScope`.

        Args:
            epoch: The 0-based epoch ``fit`` is beginning.

        Returns:
            True when the step the regulariser builds changes from this epoch
            on (e.g. a warm-up ends): the scope then rebuilds the train
            function. The default: False.
        """
        del epoch
        return False

    @abc.abstractmethod
    def regularized_loss(self, step):
        """Returns the loss to differentiate in this training step.

        Args:
            step: A `keras_reg.backend.base.Step`.
        """

    def get_config(self):
        """Returns the constructor arguments as a JSON-serialisable dict."""
        return {}

    @classmethod
    def from_config(cls, config):
        """Creates a regulariser from the output of `get_config`.

        Serialised schedules (see `keras_reg.training.core.schedule`) become
        schedules again; a renamed argument of an older config still works.
        """
        return cls(**{key: schedule.deserialize(v) for key, v in config.items()})

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

