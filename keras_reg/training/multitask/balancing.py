"""Multi-task loss balancing for a model compiled with one loss per output.

References:
    Su Jianlin. 多任务学习漫谈（一）：以损失之名 (Multi-task learning, part 1:
    in the name of the loss). https://kexue.fm/archives/8870

    Su Jianlin. 多任务学习漫谈（二）：行梯度之事 (Multi-task learning, part 2:
    doing it with gradients). https://kexue.fm/archives/8896

    Sener, Koltun. Multi-Task Learning as Multi-Objective Optimization.
    NeurIPS 2018. https://arxiv.org/abs/1810.04650 (the ``"pareto"`` method)
"""

from keras_reg._compat import keras
from keras_reg.backend import task_losses
from keras_reg.training.core.export import export
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.training.multitask import task_gradients
from keras_reg.training.multitask.task_gradients import (
    inverse,
    min_norm_weights,
    representation_gradients,
)
from keras_reg.validation import choice

ops = keras.ops

METHODS = ("realtime", "initial", "prior", "gradient", "pareto")
_FIXED = ("initial", "prior")
_GRADIENT = ("gradient", "pareto")


@export("balance_losses")
class LossBalancing(TrainingRegularizer):
    """Weights the per-output losses of a multi-output model so that none dominates.

    With L_i the loss of output i on the batch (its compiled loss function,
    with the batch's sample weights: the ``<output>_loss`` that ``fit`` logs,
    before ``loss_weights``), w_i the output's compiled ``loss_weights`` (1
    where none) and sg the stop-gradient, the step optimizes

        L = sum_i w_i * a_i * L_i  +  the model's own added losses

    (layer regularisation and ``add_loss`` terms, counted once, unweighted),
    with the task factors a_i of the method (Su Jianlin, part 1):

    - ``"realtime"`` (the default): a_i = sg(L_i) ** (gamma - 1). With
      ``gamma=0``, a_i = 1 / sg(L_i): every task's loss is worth 1 at every step
      and the gradient is sum_i grad(L_i) / L_i = grad(sum_i log L_i), so
      multiplying a task's loss by any constant changes nothing. ``gamma``
      between 0 and 1 is the post's generalised mean
      M = ((1/n) sum_i L_i ** gamma) ** (1/gamma), whose gradient is
      proportional to sum_i L_i ** (gamma - 1) grad(L_i); the positive per-step
      factor is dropped, so ``gamma=1`` is Keras's plain weighted sum and
      ``gamma=0`` (the limit: the geometric mean) the real-time weighting.
    - ``"initial"``: a_i = 1 / L_i(init), the loss of output i before training,
      measured once at install on data you pass (``model.evaluate``: inference
      mode): each loss counted in units of its initial value.
    - ``"prior"``: a_i = 1 / L_i(prior), the loss of predicting the label
      statistics instead of using the inputs: for a cross-entropy head the
      entropy of the label frequencies, for a mean-squared-error head the
      variance of the targets (any other loss: the loss of the mean target).
      A model that learned nothing beyond the prior scores 1 on every task.
    - ``"gradient"``: a_i = 1 / ||sg grad_h L_i||, with h the batch's output of
      ``shared_layer`` (the last layer the heads share): every task's gradient
      normalised before they are summed, which makes the balance invariant to
      scaling *and* to shifting a task's loss (the post's closing step, "in the
      name of the loss, doing it with gradients"). The gradient with respect to
      h stands in for the one with respect to the shared weights theta (part 2:
      ||grad_theta L_i|| <= ||dh/dtheta|| * ||grad_h L_i||, and it costs one
      extra forward and backward pass per task instead of a full one).
    - ``"pareto"``: a = argmin over the simplex of ||sum_i a_i w_i grad_h L_i||
      (part 2, after Sener and Koltun 2018): the step follows the smallest
      combination of the task gradients, along which, to first order, no
      task's loss increases; solved by Frank-Wolfe with exact line search (25
      iterations; exact after one for two tasks).

    ``loss_weights`` are multiplied in (w_i above): balancing removes the
    scale of the losses, and ``loss_weights`` then say how much each
    normalised task counts. Drop weights you chose only to equalise scales.
    Sample weights act inside L_i exactly as in Keras (sum of w * loss over the
    batch size); with ``"realtime"`` and ``"gradient"`` a common factor on all
    of an output's sample weights therefore cancels out, while with
    ``"initial"`` and ``"prior"`` the references are measured with the sample
    weights you pass at install (none: unweighted).

    Losses are assumed positive (the post's setting); a task whose loss or
    gradient is exactly 0 gets factor 0. Under a TF distribution strategy the
    factors use each replica's shard of the batch. ``fit`` logs each task's
    effective factor w_i * a_i as ``<output>_loss_weight``; the per-output
    losses (``<output>_loss``) are Keras's own, and ``loss`` is the balanced
    loss being optimized. The log names come from the output names at install:
    a subclassed model that has never run has none yet and trains balanced
    without them (install after its first ``fit`` or ``evaluate``); outputs
    named alike (one loss for all outputs of a subclassed model) are numbered.

    Args:
        method: One of ``"realtime"``, ``"initial"``, ``"prior"``,
            ``"gradient"``, ``"pareto"``.
        gamma: Exponent of the generalised mean (``"realtime"`` only): 0 (the
            default) is the real-time weighting, 1 the plain sum.
        shared_layer: Name of the last shared layer (``"gradient"`` and
            ``"pareto"`` only).
        reference_losses: ``{output_name: loss}``: the initial or prior losses
            (``"initial"``/``"prior"``), instead of data; e.g. ``log K`` for a
            K-class head at initialisation. Filled in from the data at install.
        x: Inputs to measure the initial losses on (``"initial"``).
        y: Targets, as passed to ``fit`` (``"initial"``, ``"prior"``).
        sample_weight: Optional sample weights for the references.
        batch_size: Batch size of the measurement (``"initial"``).

    Example:
        >>> model.compile(optimizer="adam",
        ...               loss={"digit": "sparse_categorical_crossentropy",
        ...                     "ink": "mse"})
        >>> keras_reg.balance_losses(model, "realtime")
        >>> model.fit(x, {"digit": y_digit, "ink": y_ink})
    """

    balances_tasks = True

    def __init__(
        self,
        method="realtime",
        gamma=0.0,
        shared_layer=None,
        reference_losses=None,
        x=None,
        y=None,
        sample_weight=None,
        batch_size=None,
    ):
        self.method = choice("method", method, METHODS)
        if not _finite(gamma) or (gamma != 0 and method != "realtime"):
            raise ValueError(
                f"`gamma` is a finite exponent for method='realtime' (0 to 1: "
                f"0 the real-time weighting, 1 the plain sum); received "
                f"gamma={gamma!r} with method={method!r}."
            )
        self.gamma = float(gamma)
        if (shared_layer is None) == (method in _GRADIENT):
            raise ValueError(
                f"`shared_layer` (the name of the last layer the heads share) is "
                f"needed by, and only by, methods 'gradient' and 'pareto'; "
                f"received shared_layer={shared_layer!r} with method={method!r}."
            )
        self.shared_layer = shared_layer
        self.reference_losses = _references(reference_losses, method)
        self.data = (x, y, sample_weight, batch_size)
        if (x is not None and method != "initial") or (
            y is not None and method not in _FIXED
        ):
            raise ValueError(
                f"method={method!r} takes no {'x' if x is not None else 'y'} at "
                "install: `x` and `y` are for method='initial', `y` for "
                "method='prior'."
            )
        self.names = None

    # ---- install time ---------------------------------------------------------
    def validate(self, model):
        if task_losses.compiled_loss(model) is None or model.loss is None:
            raise ValueError(_one_loss_message(model, None))
        names = task_losses.declared_tasks(model)
        if names is not None and len(names) < 2:
            raise ValueError(_one_loss_message(model, names))
        if self.method in _GRADIENT:
            _shared_layer(model, self.shared_layer)
        if self.method in _FIXED:
            _check_distinct(names, model)
            x, y, _, _ = self.data
            if y is not None:
                self.reference_losses = self._measure(model)
                names = list(self.reference_losses)
            elif self.reference_losses is None:
                needed = "x= and y=" if self.method == "initial" else "y="
                raise ValueError(
                    f"method={self.method!r} needs the data to measure the "
                    f"{self.method} losses on: pass {needed} (a batch or the "
                    "training set, as for fit), or reference_losses={'output': "
                    "value, ...}."
                )
            _check_covered(self.reference_losses, names, model)
        self.names = names

    def _measure(self, model):
        x, y, sample_weight, batch_size = self.data
        if self.method == "initial":
            if x is None:
                raise ValueError("method='initial' needs the inputs too: pass x=.")
            logs = model.evaluate(
                x,
                y,
                sample_weight=sample_weight,
                batch_size=batch_size,
                verbose=0,
                return_dict=True,
            )
            names = task_losses.declared_tasks(model)
            if names is None or len(names) < 2:
                raise ValueError(_one_loss_message(model, names))
            _check_distinct(names, model)
            measured = {name: logs.get(f"{name}_loss") for name in names}
        else:
            measured = {
                name: task_losses.prior_loss(
                    model,
                    loss,
                    task_losses.targets_of(y, name, model),
                    task_losses.weights_of(sample_weight, name),
                )
                for name, loss in task_losses.task_loss_functions(model)
            }
        return _references(measured, self.method, measured=True)

    def logged_terms(self):
        return tuple(_terms(self.names or ()))

    # ---- inside the train step ------------------------------------------------
    def regularized_loss(self, step):
        model = step.model
        tasks = task_losses.task_losses(model, step.y, step.y_pred, step.sample_weight)
        if len(tasks.values) < 2:
            raise ValueError(_one_loss_message(model, tasks.names))
        factors = [
            ops.stop_gradient(ops.cast(w, "float32") * a)
            for w, a in zip(tasks.weights, self._task_factors(step, tasks))
        ]
        balanced = 0.0
        logged = set(self.logged_terms())
        for term, factor, value in zip(_terms(tasks.names), factors, tasks.values):
            balanced = balanced + ops.cast(factor, value.dtype) * value
            if term in logged:
                step.log(term, factor)
        balanced = task_losses.scale_for_replicas(model, balanced)
        added = task_losses.added_losses(model)
        if hasattr(added, "dtype") and added.dtype != balanced.dtype:
            # Mixed precision on tf_keras: float16 task losses and float32
            # regularisation losses add in float32, as tf_keras's own sum does.
            balanced, added = ops.cast(balanced, "float32"), ops.cast(added, "float32")
        return balanced + added

    def _task_factors(self, step, tasks):
        """Returns a_i for each task (before the compiled loss_weights)."""
        if self.method in _FIXED:
            missing = set(tasks.names) - set(self.reference_losses)
            if missing:
                raise ValueError(
                    f"No reference loss for output(s) {sorted(missing)}; "
                    f"reference_losses has {sorted(self.reference_losses)}."
                )
            return [1.0 / self.reference_losses[name] for name in tasks.names]
        if self.method == "realtime":
            # The global batch's task losses (each replica's is its shard's).
            return [
                _realtime(step.global_mean(ops.cast(value, "float32")), self.gamma)
                for value in tasks.values
            ]
        count = len(tasks.values)
        # Gradients at this replica's rows of h, of its shard's mean loss:
        # replicas x the global batch's (a common factor, divided out below).
        gradients = representation_gradients(step, self.shared_layer, count)
        if self.method == "gradient":
            return [
                inverse(
                    ops.sqrt(step.global_sum(ops.sum(ops.square(g)))) / step.replicas()
                )
                for g in gradients
            ]
        weighted = [g * ops.cast(w, g.dtype) for g, w in zip(gradients, tasks.weights)]
        weights = min_norm_weights(weighted, reduce=step.global_sum)
        return list(ops.unstack(weights, axis=0))

    def get_config(self):
        return {
            "method": self.method,
            "gamma": self.gamma,
            "shared_layer": self.shared_layer,
            "reference_losses": self.reference_losses,
        }


def _realtime(loss, gamma):
    """Returns sg(|L|) ** (gamma - 1); 0 where the loss is 0 (a solved task)."""
    size = ops.abs(ops.cast(ops.stop_gradient(loss), "float32"))
    safe = ops.maximum(size, 1e-30)
    return ops.where(size > 0, ops.power(safe, gamma - 1.0), ops.zeros_like(safe))


# ---- argument checks ------------------------------------------------------------
def _finite(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return value == value and abs(value) != float("inf")


def _references(values, method, measured=False):
    if values is None:
        return None
    if method not in _FIXED:
        raise ValueError(
            f"`reference_losses` are for methods 'initial' and 'prior'; "
            f"received reference_losses={values!r} with method={method!r}."
        )
    if not isinstance(values, dict) or not values:
        raise ValueError(
            "`reference_losses` must be a dict {output_name: positive loss}, "
            f"received reference_losses={values!r}."
        )
    checked = {}
    for name, value in values.items():
        if value is None or not _finite(value) or float(value) <= 0:
            where = f"measured {method} loss" if measured else "reference loss"
            raise ValueError(
                f"The {where} of output {name!r} is {value!r}; weighting by its "
                "inverse needs a positive finite loss (a constant target has a "
                "prior loss of 0: drop that output's loss, or pass "
                "reference_losses)."
            )
        checked[str(name)] = float(value)
    return checked


def _check_covered(references, names, model):
    if names is None:
        return
    if set(references) != set(names):
        raise ValueError(
            f"`reference_losses` must name exactly the outputs with a loss of "
            f"model {model.name!r}: {sorted(names)}; received "
            f"{sorted(references)}."
        )


def _terms(names):
    """Returns the log names ``<output>_loss_weight`` (numbered where repeated)."""
    names = list(names)
    terms, seen = [], {}
    for name in names:
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}_{seen[name]}"
        terms.append(f"{name}_loss_weight")
    return terms


def _check_distinct(names, model):
    if names is not None and len(set(names)) != len(names):
        raise ValueError(
            f"The outputs of model {model.name!r} have no distinct names "
            f"({names}), so their reference losses cannot be told apart: compile "
            "with a dict of losses by output name, or name the output layers."
        )


def _shared_layer(model, name):
    try:
        layer = model.get_layer(name)
    except ValueError as error:
        raise ValueError(
            f"No layer named {name!r} in model {model.name!r} (shared_layer): "
            "name the last layer whose output every head reads."
        ) from error
    task_gradients.check_upstream_of_outputs(model, layer)
    return layer


def _one_loss_message(model, names):
    found = "no compiled loss" if names is None else (
        f"{len(names)} loss term(s) ({', '.join(map(repr, names)) or 'none'})"
    )
    return (
        f"Loss balancing needs a model compiled with one loss per output, for at "
        f"least two outputs; model {model.name!r} has {found}. A single-output "
        "model, or one loss computed over all outputs together, has nothing to "
        "balance. Compile one loss per output, e.g. `model.compile(loss={'cls': "
        "'sparse_categorical_crossentropy', 'reg': 'mse'}, optimizer='adam')`."
    )
