"""A training step whose every pass runs with the weights moved: ``w + e``.

`OffsetStep` is what a regulariser sees when a weight-space method (SAM, AWP)
wraps it: the same batch and the same backend, but the clean pass, the clean
gradient and every extra pass are taken at ``w + e`` instead of ``w``. It is
written over the primitives of `keras_reg.backend.base.Step`, once for every
backend:

- the clean pass is one more training pass, `Step.training_loss` with
  ``added=e``: its loss and output stand for `Step.loss` and `Step.y_pred`;
- the clean gradient is `Step.value_and_gradient` of that pass recomputed
  (constant, of the loss scaled by the optimizer's loss scale, like
  `Step.loss_gradients`), taken once per variable;
- an extra pass with ``added=d`` runs at ``w + e + d``.

Nothing is written to a weight that is not copied back exactly: the passes
are the backend's own (`Step.training_loss`). What needs the trainer's own
forward pass -- gradients with respect to a layer's outputs or the inputs,
differentiable gradients (double backprop) -- is not available here, and says
so.

With ``quiet=True`` (a pass inside another differentiation: SAM's ascent)
the regularisers' ``log`` calls are dropped, so a term is logged once per
step, at ``w + e``.
"""

from keras_reg._compat import keras
from keras_reg.backend import base

_UNAVAILABLE = (
    "{what} is not available at weights moved by a weight-space method (SAM, "
    "AWP): it needs the trainer's own forward pass. Train this regulariser "
    "without the weight-space method, or compose it without one."
)


def merged(first, second):
    """Returns the ``(variable, delta)`` pairs of ``first`` and ``second``.

    Dense deltas of one variable are added (a pass substitutes one value per
    variable); a backend's sparse rows (TensorFlow's ``SparseRows``) stay a
    pair of their own, which the backend applies after the dense one.
    """
    pairs = [list(pair) for pair in first]
    for variable, delta in second:
        same = [
            pair
            for pair in pairs
            if pair[0] is variable and not isinstance(pair[1], tuple)
        ]
        if same and not isinstance(delta, tuple):
            ops = keras.ops
            added = same[0][1]
            same[0][1] = ops.add(ops.cast(added, "float32"), ops.cast(delta, "float32"))
        else:
            pairs.append([variable, delta])
    return [tuple(pair) for pair in pairs]


class OffsetStep:
    """A `keras_reg.backend.base.Step` whose passes run at ``w + offsets``.

    Every attribute and method not defined here is the wrapped step's (the
    batch, the reductions across replicas, the loss scale, sparse-aware
    norms, carried state).

    Args:
        step: The step of the training step in progress.
        offsets: ``(variable, delta)`` pairs, the deltas constants.
        frozen: Non-trainable variables whose updates the passes discard.
        quiet: Drop ``log`` calls (a pass inside another differentiation).
    """

    def __init__(self, step, offsets=(), frozen=(), quiet=False):
        self._step = step
        self._offsets = [
            (v, keras.tree.map_structure(keras.ops.stop_gradient, d))
            for v, d in offsets
        ]
        self._frozen = list(frozen)
        self._quiet = quiet
        self._clean = None
        self._gradients = {}  # id(variable) -> d (scaled loss) / d variable
        self._loss_gradient = {}  # for base.Step.loss_gradient

    def __getattr__(self, name):
        return getattr(self._step, name)

    # ---- the clean pass, at w + e ------------------------------------------------
    def _pass(self):
        if self._clean is None:
            self._clean = self._step.training_loss(
                added=self._offsets, frozen=self._frozen, with_output=True
            )
        return self._clean

    @property
    def y_pred(self):
        return self._pass()[0]

    @property
    def loss(self):
        return self._pass()[1]

    def clean_loss(self):
        return self.loss

    def clean_output(self):
        return None

    def loss_plus(self, term):
        return base.Step.loss_plus(self, term)

    def log(self, name, value):
        if not self._quiet:
            self._step.log(name, value)

    # ---- gradients of the clean pass ---------------------------------------------
    def loss_gradients(self, variables, differentiable=False):
        if differentiable:
            raise ValueError(
                _UNAVAILABLE.format(what="A differentiable gradient (a penalty)")
            )
        missing = [v for v in variables if id(v) not in self._gradients]
        if missing:

            def scaled_loss(given):
                del given
                loss = self._step.training_loss(
                    added=self._offsets, frozen=self._frozen, keep_updates=False
                )
                return self._step.scale_loss(loss), None

            _, gradients = self._step.value_and_gradient(scaled_loss, missing)
            self._gradients.update((id(v), g) for v, g in zip(missing, gradients))
        return [self._gradients[id(v)] for v in variables]

    def loss_gradient(self, variable):
        return base.Step.loss_gradient(self, variable)

    def matrix_gradient(self, layer, variable, perturbation=None):
        # The generic path: the wrapped step's rows are of its own pass, at w.
        return base.Step.matrix_gradient(self, layer, variable, perturbation)

    def matrix_loss_gradients(self, layer, variable, variables):
        return base.Step.matrix_loss_gradients(self, layer, variable, variables)

    def penalty_gradients(self, variables):
        return base.Step.penalty_gradients(self, variables)

    def matrix_penalty_gradient(self, layer, variable):
        return base.Step.matrix_penalty_gradient(self, layer, variable)

    def loss_plus_gradient_norm(self, variables, weight, table=None):
        return base.Step.loss_plus_gradient_norm(self, variables, weight, table)

    def output_gradients(self, layer, of=None):
        raise ValueError(_UNAVAILABLE.format(what=f"The gradient at {layer.name!r}"))

    def input_gradients(self, of):
        raise ValueError(_UNAVAILABLE.format(what="The gradient w.r.t. the inputs"))

    def lookup_shapes(self, layer):
        raise ValueError(_UNAVAILABLE.format(what=f"The lookups of {layer.name!r}"))

    # ---- extra passes, at w + e + delta ------------------------------------------
    def training_loss(self, added=(), frozen=(), **kwargs):
        return self._step.training_loss(
            added=merged(self._offsets, added),
            frozen=self._frozen + list(frozen),
            **kwargs,
        )

    def loss_with_perturbation(
        self, layer, variable, perturbation, keep_updates=True, added=(), frozen=()
    ):
        del layer
        perturbation = keras.tree.map_structure(keras.ops.stop_gradient, perturbation)
        return self.training_loss(
            added=[(variable, perturbation), *added],
            frozen=frozen,
            keep_updates=keep_updates,
        )

    def forward(self, x, training=False, layer=None, transform=None):
        raise ValueError(_UNAVAILABLE.format(what="An inference pass (`forward`)"))
