"""Weight-space perturbation: SAM / ASAM and AWP.

Both take the clean gradient g = dL/dw of the batch, move the weights to a
nearby point w + e(w) where the loss is higher, and apply to w the gradient
of the loss there, dL/dw evaluated at w + e(w) (e held constant). The weights
themselves never hold w + e: the perturbed pass substitutes the values
(JAX, PyTorch) or the saved values are copied back (TensorFlow, tf_keras);
``w + e - e``, which drifts by rounding (tf.keras's experimental
``SharpnessAwareMinimization`` restores that way), is never computed.

References:
    Foret, Kleiner, Mobahi, Neyshabur. Sharpness-Aware Minimization for
    Efficiently Improving Generalization. ICLR 2021.
    https://arxiv.org/abs/2010.01412

    Kwon, Kim, Park, Choi. ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks. ICML 2021.
    https://arxiv.org/abs/2102.11600

    Wu, Xia, Wang. Adversarial Weight Perturbation Helps Robust
    Generalization. NeurIPS 2020. https://arxiv.org/abs/2004.05884
"""

from keras_reg._compat import keras
from keras_reg.backend import keras_internals
from keras_reg.backend import rows as sparse_rows
from keras_reg.training.core import schedule
from keras_reg.training.core.embedding import largest_embedding
from keras_reg.training.core.export import export, warn_deprecated
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.validation import (
    boolean,
    integer_argument,
    non_negative_number,
    require_loss,
)

ops = keras.ops

# Additive offsets, which ASAM does not rescale (T_w = 1 for biases).
_OFFSETS = ("bias", "beta")


def _short_name(variable):
    """``'dense/bias:0'`` or ``'bias'`` -> ``'bias'``."""
    return variable.name.split("/")[-1].split(":")[0]


def _float32(value):
    value = ops.convert_to_tensor(value)
    return value if value.dtype == "float32" else ops.cast(value, "float32")


def _unscaled_gradients(step, variables, table):
    """The clean gradients, float32, divided by the loss scale (mixed precision).

    Of the global batch (the replicas' shares summed), zeros for a variable
    the loss does not use; one backward pass for all of them. Dense, except
    a sparse gradient (``table``'s matrix where it is a plain lookup, any
    `tf.IndexedSlices` on TensorFlow), kept as its summed rows
    (`keras_reg.backend.rows.SparseRows`).
    """
    if table is None:
        taken = step.loss_gradients(variables)
    else:
        taken = step.matrix_loss_gradients(table[0], table[1], variables)
    factor = _float32(step.scale_loss(ops.ones((), "float32")))

    def unscaled(gradient):
        return _float32(gradient) / factor

    return [
        sparse_rows.map_values(
            unscaled,
            step.rows_or_dense(None if g is None else step.global_sum(g), v),
        )
        for g, v in zip(taken, variables)
    ]


def _values(tensor):
    """The values of ``tensor``: its rows' where it is `SparseRows`."""
    return tensor.values if sparse_rows.is_rows(tensor) else tensor


def _like(gradient, values):
    """``values`` as rows of ``gradient`` where it is `SparseRows`, else as is."""
    if sparse_rows.is_rows(gradient):
        return sparse_rows.SparseRows(gradient.rows, values)
    return values


def _perturbed_loss(step, pairs, table, frozen):
    """The training loss at ``w + e`` for ``(variable, e)`` pairs.

    A table perturbed by rows is added at its lookup's output
    (`keras_reg.backend.base.Step.loss_with_perturbation`): the pass holds no
    second ``vocabulary x dim`` matrix.
    """
    if table is not None:
        layer, matrix = table
        rows = [delta for v, delta in pairs if v is matrix]
        if rows and sparse_rows.is_rows(rows[0]):
            others = [(v, delta) for v, delta in pairs if v is not matrix]
            return step.loss_with_perturbation(
                layer, matrix, rows[0], added=others, frozen=frozen
            )
    return step.training_loss(added=pairs, frozen=frozen)


def _batch_norm_statistics(model):
    """The non-trainable variables of the model's BatchNormalization layers."""
    statistics = []
    for layer in keras_internals.sublayers(model):
        if any(c.__name__ == "BatchNormalization" for c in type(layer).__mro__):
            statistics.extend(layer.non_trainable_weights)
    return statistics


def _layer_variables(model, names, owner):
    variables = []
    for name in names:
        try:
            layer = model.get_layer(name)
        except ValueError as error:
            raise ValueError(
                f"{owner}: no layer named {name!r} in model {model.name!r}. "
                f"Layers: {', '.join(repr(x.name) for x in model.layers)}."
            ) from error
        variables.extend(layer.trainable_variables)
    return variables


def _check_layers(layers):
    if layers is None:
        return None
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise ValueError(
            "`layers` must be a list of layer names or None, received "
            f"layers={layers!r}. Pass e.g. layers=['dense']."
        )
    return list(layers)


class _WeightPerturbation(TrainingRegularizer):
    """A second pass at w + e(w); subclasses give e(w) from the clean gradients."""

    weight_space = True

    def __init__(self, update_batch_norm):
        self.update_batch_norm = boolean("update_batch_norm", update_batch_norm)

    def validate(self, model):
        require_loss(type(self).__name__, model)
        if not self.watched_variables(model):
            raise ValueError(
                f"{self!r} found no weight to perturb in model {model.name!r}. "
                "Build the model first, or name layers with trainable kernels."
            )

    def logged_terms(self):
        return ("sharpness",)

    def row_lookups(self, model):
        table = largest_embedding(model, self.watched_variables(model))
        return [] if table is None else [table[0]]

    def regularized_loss(self, step):
        variables = self.watched_variables(step.model)
        table = largest_embedding(step.model, variables)
        gradients = _unscaled_gradients(step, variables, table)
        # Read where needed only (ASAM: the rows of a table's gradient; AWP:
        # norms): e(w) is a constant of the perturbed pass either way.
        values = [_float32(v) for v in variables]
        deltas = self.perturbations(variables, values, gradients, step)
        frozen = [] if self.update_batch_norm else _batch_norm_statistics(step.model)
        # One more pass at w + e(w), the weights' own values kept bit for bit.
        perturbed = _perturbed_loss(
            step, list(zip(variables, deltas)), table, frozen
        )
        step.log("sharpness", _float32(perturbed) - _float32(step.clean_loss()))
        return perturbed

    def perturbations(self, variables, values, gradients, step):
        """Returns e(w), one float32 tensor per variable.

        Args:
            variables: The perturbed variables.
            values: The variables' current values (float32; e(w) is taken
                as a constant).
            gradients: dL/dw at those values (float32, unscaled; the nonzero
                rows of a sparse one as `keras_reg.backend.rows.SparseRows`,
                whose e(w) is then rows too).
            step: The `keras_reg.backend.base.Step` in progress (for the
                current value of a scheduled strength).
        """
        raise NotImplementedError


def _no_nan(condition, values):
    """``values`` where ``condition`` holds, else zeros (no perturbation)."""

    def kept(value):
        return ops.where(condition, value, ops.zeros_like(value))

    return [sparse_rows.map_values(kept, v) for v in values]


@export("sharpness_aware_minimization")
class SAM(_WeightPerturbation):
    """Sharpness-aware minimisation (Foret et al. 2021), and ASAM (Kwon et al. 2021).

    With g = dL/dw the clean gradient of the batch over all trainable weights
    (the compiled loss with sample weights, plus the model's losses), the step
    perturbs every weight by

        e(w) = rho * T^2 g / ||T g||      (the norm over all weights together)

    with T = 1 (SAM) or, with ``adaptive=True`` (ASAM), T = |w| + eta
    elementwise for every weight except additive offsets (variables named
    ``bias`` or ``beta``, whose T is 1, as in the ASAM authors' code), and
    applies the gradient of L at w + e(w) to w. No perturbation where
    ||T g|| is 0 or not finite (a NaN batch, an overflowing float16 step:
    the gradients are unscaled first, and a ``LossScaleOptimizer`` then skips
    the step as usual).

    The perturbed pass is an ordinary training pass: it draws its own dropout
    mask. With ``update_batch_norm=False`` (the default, as the SAM reference
    implementation recommends) BatchNormalization's moving statistics keep the
    clean pass's update only; both passes normalise with their own batch
    statistics. The loss ``fit`` reports is L(w + e), the loss being
    optimized; ``sharpness`` in the logs is L(w + e) - L(w).

    Args:
        rho: Radius of the neighbourhood. Default (None): 0.05 for SAM (the
            SAM paper's usual value), 0.5 for ASAM (the ASAM paper's CIFAR
            value; use 1.0 on ImageNet-sized problems). At most ~1.8e19 (its
            square must be a finite float32). Or a schedule of the step (see
            `keras_reg.training.core.schedule`).
        adaptive: ASAM: scale the neighbourhood by |w| + eta.
        eta: ASAM's offset keeping T positive at w = 0 (paper: 0.01).
        update_batch_norm: Let the perturbed pass update BatchNormalization's
            moving statistics too.

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        >>> keras_reg.sharpness_aware_minimization(model, rho=0.05)
        >>> model.fit(x, y)
    """

    def __init__(self, rho=None, adaptive=False, eta=0.01, update_batch_norm=False):
        super().__init__(update_batch_norm)
        self.adaptive = boolean("adaptive", adaptive)
        if rho is None:
            rho = 0.5 if self.adaptive else 0.05
        self.rho = schedule.strength("rho", rho, example=0.05)
        self.eta = non_negative_number("eta", eta, example=0.01)

    def watched_variables(self, model):
        return list(model.trainable_variables)

    def perturbations(self, variables, values, gradients, step):
        rho = schedule.current(step, self.rho)
        scales = [self._scale(v, w, g) for v, w, g in zip(variables, values, gradients)]
        scaled = [
            _values(g) if t is None else t * _values(g)
            for g, t in zip(gradients, scales)
        ]
        norm = ops.sqrt(sum(ops.sum(ops.square(s)) for s in scaled))
        usable = ops.logical_and(ops.isfinite(norm), norm > 0)
        factor = ops.divide_no_nan(ops.cast(rho, "float32"), norm)
        deltas = [
            _like(g, (s if t is None else t * s) * factor)
            for g, s, t in zip(gradients, scaled, scales)
        ]
        return _no_nan(usable, deltas)

    def _scale(self, variable, value, gradient):
        """ASAM's T = |w| + eta where the gradient is (None: T = 1)."""
        if not self.adaptive or _short_name(variable) in _OFFSETS:
            return None
        if sparse_rows.is_rows(gradient):
            value = sparse_rows.matrix_rows(value, gradient.rows)
        return ops.stop_gradient(ops.abs(value)) + self.eta

    def get_config(self):
        return {
            "rho": schedule.serialize(self.rho),
            "adaptive": self.adaptive,
            "eta": self.eta,
            "update_batch_norm": self.update_batch_norm,
        }


@export("awp")
class AWP(_WeightPerturbation):
    """Adversarial weight perturbation (Wu et al. 2020), on the batch's own inputs.

    For each perturbed weight tensor w_l (by default every trainable weight
    with two or more axes: kernels and embedding matrices, not biases or
    normalisation scales, as in the authors' code) with clean gradient g_l,
    the step uses

        e_l = gamma * ||w_l|| * g_l / ||g_l||      (norms per tensor)

    and applies the gradient of L at w + e to w. A tensor whose gradient is
    0 gets no perturbation; a non-finite gradient anywhere (a NaN batch)
    perturbs nothing. The authors compute g on adversarial examples (PGD);
    here g is the gradient of the compiled loss on the batch as given.

    The paper's warm-up (plain epochs first) is the scope's: train with
    ``keras_reg.callbacks.RegularizationScope(AWP(...), start_epoch=k)``;
    epochs before ``k`` are plain steps. As `SAM`, BatchNormalization
    statistics keep the clean pass's update unless ``update_batch_norm=True``;
    ``sharpness`` in the logs is L(w + e) - L(w).

    Args:
        gamma: Relative size of the perturbation of each tensor (paper: 5e-3
            for adversarial training on CIFAR-10), or a schedule of the step
            (see `keras_reg.training.core.schedule`).
        layers: Names of the layers whose kernels are perturbed; None: every
            trainable weight with two or more axes.
        update_batch_norm: Let the perturbed pass update BatchNormalization's
            moving statistics too.
        start_epoch: Deprecated (removed in 0.3): the first epoch with AWP,
            which a `keras_reg.callbacks.RegularizationScope` holding this AWP
            takes as its own ``start_epoch``; pass it to the scope instead.

    Example:
        >>> keras_reg.awp(model, gamma=5e-3)
        >>> scope = keras_reg.callbacks.RegularizationScope(
        ...     keras_reg.AWP(gamma=5e-3), start_epoch=2)
        >>> model.fit(x, y, epochs=10, callbacks=[scope])
    """

    def __init__(
        self, gamma=5e-3, layers=None, update_batch_norm=False, *, start_epoch=None
    ):
        super().__init__(update_batch_norm)
        self.gamma = schedule.strength("gamma", gamma, example=5e-3)
        self.layers = _check_layers(layers)
        if start_epoch is None:
            start_epoch = 0
        else:
            start_epoch = integer_argument("start_epoch", start_epoch, 0, example=1)
            warn_deprecated(
                f"AWP(start_epoch={start_epoch}) is deprecated and will be removed "
                "in 0.3: pass the warm-up to the scope, keras_reg.callbacks."
                f"RegularizationScope(AWP(...), start_epoch={start_epoch})."
            )
        self.start_epoch = start_epoch
        self._epoch = None

    def watched_variables(self, model):
        if self.layers is None:
            variables = list(model.trainable_variables)
        else:
            variables = _layer_variables(model, self.layers, "AWP")
        return [v for v in variables if len(v.shape) >= 2]

    def required_layers(self, model):
        if self.layers is None:
            return []
        return [(model.get_layer(name), False) for name in self.layers]

    def on_epoch_begin(self, epoch):
        self._epoch = epoch
        return False

    def regularized_loss(self, step):
        if self.start_epoch and self._epoch is None:
            raise ValueError(
                f"AWP(start_epoch={self.start_epoch}) needs to know the epoch, "
                "which only a callback sees. Train with `model.fit(..., callbacks="
                "[keras_reg.callbacks.RegularizationScope(AWP(...), start_epoch="
                f"{self.start_epoch})])`."
            )
        return super().regularized_loss(step)

    def perturbations(self, variables, values, gradients, step):
        del variables
        gamma = schedule.current(step, self.gamma)
        squares = [ops.sum(ops.square(_values(g))) for g in gradients]
        usable = ops.isfinite(sum(squares))
        deltas = []
        for w, g, square in zip(values, gradients, squares):
            norm = ops.sqrt(square)
            size = ops.stop_gradient(step.frobenius_norm(w)) * gamma
            deltas.append(_like(g, _values(g) * ops.divide_no_nan(size, norm)))
        return _no_nan(usable, deltas)

    def get_config(self):
        config = {
            "gamma": schedule.serialize(self.gamma),
            "layers": self.layers,
            "update_batch_norm": self.update_batch_norm,
        }
        if self.start_epoch:
            config["start_epoch"] = self.start_epoch
        return config
