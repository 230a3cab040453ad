"""JAX backend for Keras 3 models.

Keras's JAX train step is a pure function of its state: ``compute_loss`` runs
inside ``jax.value_and_grad`` and inside a `keras.StatelessScope` holding the
traced values of the variables. So:

- the gradient of the clean loss with respect to a variable cannot be read
  off the trainer's forward pass: `Step.loss_gradient` recomputes that pass as
  a function of the variable's value (same inputs, same starting state, hence
  the same dropout mask) and differentiates it with ``jax.grad``; under ``jit``
  XLA may share work between the two passes;
- perturbed passes substitute values (see `keras_reg.backend.stateless`);
- the optimizer's variables (loss scale, step count) are not in the scope
  ``compute_loss`` runs in, and ``fit`` purges their values from the
  variables: they are read from the train step's state argument;
- a `keras.random.SeedGenerator` outside the model is not part of that state,
  so its state cannot advance inside the step: `Step.seed` derives a fresh key
  from the generator's seed and the optimizer's step count instead.
"""

import contextlib
from typing import NamedTuple, Optional

import jax

from keras_reg._compat import keras
from keras_reg.backend import base, keras_internals, reads, stateless
from keras_reg.backend import rows as sparse_rows
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


class Recorder(NamedTuple):
    """What the step scope saw: the JAX train step's state, when recognised.

    Attributes:
        state: ``(trainable, non_trainable, optimizer, metrics)`` value lists
            passed to ``train_step``, or None (a custom step signature).
    """

    state: Optional[tuple]


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
    """Keeps the train step's state argument for the step's regulariser.

    Args:
        model: The model being trained (unused here; part of the interface).
        variables: The variables regularisers differentiate with respect to
            (unused: JAX recomputes, it does not record).
        layers: Layers whose outputs regularisers differentiate with respect
            to (unused, likewise).
        inputs: Whether regularisers differentiate w.r.t. the inputs (unused).
        several: Whether several regularisers share the step (unused).
        lookups: Embedding layers whose matrix gradient may be taken as rows
            (unused: the clean pass is recomputed).
        step_args: The positional arguments of ``train_step``:
            ``(state, data)`` for Keras's JAX trainer.

    Yields:
        A `Recorder`.
    """
    del model, variables, layers, inputs, several, lookups
    state = step_args[0] if step_args else None
    if not (isinstance(state, (tuple, list)) and len(state) == 4):
        state = None
    yield Recorder(state)


class Step(stateless.Step):
    """`keras_reg.backend.base.Step` for Keras 3 models on JAX."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._draws = 0
        self._recomputed_loss = None
        self._recomputed_output = None

    def loss_plus(self, term):
        """Returns ``loss + term``, the loss from the recomputed pass if there is one.

        A penalty's gradient comes from a recomputed clean pass (JAX cannot
        read gradients off the trainer's pass). That pass computes the same
        loss, from the same inputs and starting state; optimizing it rather
        than the trainer's leaves the trainer's pass feeding only metrics, so
        XLA drops its backward and can merge its forward with the recomputed
        one (measured: see benchmarks/gradient_penalty_step.py).
        """
        if self._recomputed_loss is None:
            return super().loss_plus(term)
        return self._recomputed_loss + keras.ops.cast(term, self._recomputed_loss.dtype)

    def clean_loss(self):
        if self._recomputed_loss is None:
            return self.loss
        return self._recomputed_loss

    def clean_output(self):
        return self._recomputed_output

    def _start_values(self):
        """The non-trainable values before the trainer's pass (same dropout mask)."""
        if self._recorder.state is None:
            return []
        return list(zip(self.model.non_trainable_variables, self._recorder.state[1]))

    def loss_gradient(self, variable):
        """The recomputed clean pass, with its reads of ``variable`` counted.

        An override of `base.Step.loss_gradient` (the same numbers): an
        unused variable is an error here too (JAX's gradient of it is zeros,
        not None), and the gradient is laid out like the variable under a
        distribution that shards it (`like_variable`).
        """
        start = self._start_values()

        counts = reads.ReadCounts()

        def clean_loss(value):
            y_pred, loss = self.pass_loss(
                values=[(variable, value)],
                start=start,
                keep=False,
                around=reads.recorded_reads(variable, counts=counts),
                output="both",
            )
            return self.scale_loss(loss), y_pred

        (scaled, y_pred), gradient = jax.value_and_grad(clean_loss, has_aux=True)(
            variable.value
        )
        if counts.total == 0:
            raise ValueError(base._UNUSED.format(name=variable.name))
        self._keep_clean_pass(scaled, y_pred)
        return jax.lax.stop_gradient(like_variable(gradient, variable))

    def loss_gradients(self, variables, differentiable=False):
        scaled, gradients = self._scaled_value_and_gradients(variables)
        self._keep_clean_pass(scaled)
        if differentiable:
            return list(gradients)
        return [jax.lax.stop_gradient(g) for g in gradients]

    def iteration(self):
        iterations = self.model.optimizer.iterations
        values = dict((id(v), value) for v, value in self._optimizer_values())
        count = values.get(id(iterations))
        if count is None:
            count = iterations.value
        return keras.ops.cast(count, "float32")

    def _shape_pass(self, layer, record):
        start = self._start_values()
        jax.eval_shape(
            lambda: self.pass_loss(
                start=start, keep=False, layer=layer, transform=record
            )
        )

    def loss_plus_gradient_norm(self, variables, weight, table=None):
        """Forward over reverse: ``H v`` as the JVP of the gradient, then `linear_loss`.

        The gradient g = dL/dw of every trainable weight is linearised
        (`jax.linearize` of the recomputed clean pass's gradient, same dropout
        mask), and the penalty's gradient 2 weight H v (v: g on ``variables``,
        0 elsewhere) is that linearisation applied to v. The optimizer gets
        ``g + 2 weight H v`` through `linear_loss`, so nothing is
        differentiated twice in reverse mode. The same FLOPs as reverse over
        reverse, but measured 2.4x against 4.0x a plain gradient's time on the
        BERT-shaped model (XLA on CPU): the second reverse pass over the first
        one's stored intermediates is what was slow.
        """
        trainable = list(self.model.trainable_variables)
        chosen = {id(v) for v in variables}
        if not chosen <= {id(v) for v in trainable}:
            return super().loss_plus_gradient_norm(variables, weight)
        if (
            table is not None
            and any(v is table[1] for v in trainable)
            and self._plain_lookup(*table)
        ):
            return self._gradient_norm_by_rows(variables, weight, *table)
        start = self._start_values()

        def scaled_gradients(values):
            def scaled_loss(values):
                y_pred, loss = self.pass_loss(
                    values=list(zip(trainable, values)),
                    start=start,
                    keep=False,
                    output="both",
                )
                return self.scale_loss(loss), (loss, y_pred)

            return jax.grad(scaled_loss, has_aux=True)(values)

        values = [jax.lax.stop_gradient(v.value) for v in trainable]
        scaled, product, (loss, y_pred) = jax.linearize(
            scaled_gradients, values, has_aux=True
        )
        self._keep_clean_pass(None, y_pred)
        gradients = [self.unscaled(g) for g in scaled]
        direction = base.finite_or_zero(self, [
            g if id(v) in chosen else jax.numpy.zeros_like(g)
            for v, g in zip(trainable, gradients)
        ])
        products = [self.unscaled(h) for h in product(direction)]
        penalty = weight * sum(self.squared_norm(g) for g in direction)
        total = [g + (2.0 * weight) * h for g, h in zip(gradients, products)]
        value = keras.ops.cast(loss, "float32") + penalty
        return self.linear_loss(value, trainable, total), penalty

    def _gradient_norm_by_rows(self, variables, weight, layer, matrix):
        """`loss_plus_gradient_norm` with the table's gradient and tangent as rows.

        The clean pass is linearised with respect to the other trainable
        weights and to a zero offset added at each of ``layer``'s lookup
        outputs, not the matrix: E enters the loss only through ``E[ids]``,
        so dL/dE is the offsets' gradients summed per id, and the
        Hessian-vector product's E part is the offsets' tangent output summed
        per id, with the tangent ``v_E[ids]`` on the offsets. The same
        numbers as the dense form, without a ``vocabulary x dim`` gradient
        or tangent (the optimizer's gradient of E comes from `linear_loss`).
        """
        others = [v for v in self.model.trainable_variables if v is not matrix]
        chosen = {id(v) for v in variables}
        start = self._start_values()
        shapes = self._abstract_lookups(layer, start)

        def scaled_gradients(given):
            def scaled_loss(given):
                offsets, values = given
                pending, ids = list(offsets), []

                def add(output, inputs):
                    if not base.is_lookup(output, inputs):
                        return output
                    ids.append(inputs)
                    return output + pending.pop(0)

                y_pred, loss = self.pass_loss(
                    values=list(zip(others, values)),
                    start=start,
                    keep=False,
                    layer=layer,
                    transform=add,
                    output="both",
                )
                return self.scale_loss(loss), (loss, y_pred, ids)

            return jax.grad(scaled_loss, has_aux=True)(given)

        zeros = [jax.numpy.zeros(s.shape, s.dtype) for s in shapes]
        values = [jax.lax.stop_gradient(v.value) for v in others]
        (at_outputs, scaled), product, (loss, y_pred, ids) = jax.linearize(
            scaled_gradients, (zeros, values), has_aux=True
        )
        self._keep_clean_pass(None, y_pred)
        rows = sparse_rows.summed(ids, [self.unscaled(g) for g in at_outputs])
        gradients = [self.unscaled(g) for g in scaled]
        direction_rows = rows if id(matrix) in chosen else rows._replace(
            values=jax.numpy.zeros_like(rows.values)
        )
        direction = [
            g if id(v) in chosen else jax.numpy.zeros_like(g)
            for v, g in zip(others, gradients)
        ]
        direction_rows, *direction = base.finite_or_zero(
            self, [direction_rows, *direction]
        )
        tangents = [
            sparse_rows.lookup(direction_rows, i).astype(z.dtype)
            for i, z in zip(ids, zeros)
        ]
        at_outputs_h, products = product((tangents, direction))
        rows_h = sparse_rows.summed(ids, [self.unscaled(h) for h in at_outputs_h])
        penalty = weight * sum(
            self.squared_norm(g) for g in [direction_rows, *direction]
        )
        total_rows = rows._replace(values=rows.values + (2.0 * weight) * rows_h.values)
        total = [
            g + (2.0 * weight) * self.unscaled(h) for g, h in zip(gradients, products)
        ]
        value = keras.ops.cast(loss, "float32") + penalty
        return self.linear_loss(value, [matrix, *others], [total_rows, *total]), penalty

    def _abstract_lookups(self, layer, start):
        """The shapes and dtypes of ``layer``'s lookup outputs (an abstract pass)."""
        lookups = []

        def record(output, inputs):
            if base.is_lookup(output, inputs):
                lookups.append(jax.ShapeDtypeStruct(output.shape, output.dtype))
            return output

        jax.eval_shape(
            lambda: self.pass_loss(
                start=start, keep=False, layer=layer, transform=record
            )
        )
        if not lookups:
            raise ValueError(base.NO_LOOKUP.format(name=layer.name))
        return lookups

    def _scaled_value_and_gradients(self, variables):
        """The clean pass recomputed (same mask): scaled loss, d it / d v.

        Its output is kept for `clean_output`.
        """
        start = self._start_values()

        def scaled_loss(values):
            y_pred, loss = self.pass_loss(
                values=list(zip(variables, values)),
                start=start,
                keep=False,
                output="both",
            )
            return self.scale_loss(loss), y_pred

        (scaled, y_pred), gradients = jax.value_and_grad(scaled_loss, has_aux=True)(
            [v.value for v in variables]
        )
        self._keep_clean_pass(None, y_pred)
        return scaled, gradients

    def output_gradients(self, layer, of=None):
        value, _, _, (gradients, _) = self._lookup_pass(layer, of)
        if of is not None:
            return gradients
        self._keep_clean_pass(value)
        return [self.unscaled(g) for g in gradients]

    def _penalty_lookup_gradients(self, layer):
        value, _, ids, (gradients, _) = self._lookup_pass(layer)
        self._keep_clean_pass(value)
        return ids, [self.unscaled(g) for g in gradients]

    def _clean_lookup_gradients(self, layer, variables=()):
        scaled, y_pred, ids, gradients = self._lookup_pass(layer, variables=variables)
        self._keep_clean_pass(scaled, y_pred)
        outputs, others = jax.lax.stop_gradient(gradients)
        return (ids, outputs, others) if variables else (ids, outputs)

    def _lookup_pass(self, layer, of=None, variables=()):
        """The recomputed clean pass (same mask), differentiated at ``layer``'s lookups.

        Args:
            layer: The layer whose lookup outputs are differentiated.
            of: Differentiate ``of(y_pred)`` instead of the scaled loss.
            variables: Variables (not the layer's matrix) whose values are
                differentiated too, in the same backward pass.

        Returns:
            ``(value, y_pred, ids, (gradients, variable_gradients))``: the
            scaled loss (or ``of(y_pred)``), the pass's output, each lookup's
            ids, and the value's gradients with respect to each lookup's
            output and to each of ``variables``.
        """
        start = self._start_values()
        lookups = self._abstract_lookups(layer, start)

        def objective(given):
            deltas, values = given
            pending, ids = list(deltas), []

            def add(output, inputs):
                if base.is_lookup(output, inputs):
                    ids.append(inputs)
                    return output + pending.pop(0)
                return output

            output = self.pass_loss(
                values=list(zip(variables, values)),
                start=start,
                keep=False,
                layer=layer,
                transform=add,
                output=True if of is not None else "both",
            )
            if of is not None:
                return of(output), (output, ids)
            y_pred, loss = output
            return self.scale_loss(loss), (y_pred, ids)

        zeros = [jax.numpy.zeros(s.shape, s.dtype) for s in lookups]
        values = [v.value for v in variables]
        (value, (y_pred, ids)), gradients = jax.value_and_grad(
            objective, has_aux=True
        )((zeros, values))
        return value, y_pred, ids, gradients

    def input_gradients(self, of):
        start = self._start_values()
        leaves = keras.tree.flatten(self.x)
        floats = [
            i
            for i, t in enumerate(leaves)
            if jax.numpy.issubdtype(t.dtype, jax.numpy.floating)
        ]

        def projected(values):
            replaced = list(leaves)
            for i, value in zip(floats, values):
                replaced[i] = value
            x = keras.tree.pack_sequence_as(self.x, replaced)
            return of(self.pass_loss(x=x, start=start, keep=False, output=True))

        return jax.grad(projected)([leaves[i] for i in floats])

    def _keep_clean_pass(self, scaled, y_pred=None):
        """Keeps a recomputed clean pass's loss and output (the first one's).

        Args:
            scaled: Its scaled loss, differentiable by the trainer (for
                `loss_plus` and `clean_loss`), or None.
            y_pred: Its output, or None (for `clean_output`: a constant).
        """
        if y_pred is not None and self._recomputed_output is None:
            self._recomputed_output = jax.lax.stop_gradient(y_pred)
        if scaled is None or self._recomputed_loss is not None:
            return
        if self.loss is None or scaled.shape != keras.ops.shape(self.loss):
            return
        self._recomputed_loss = self.unscaled(scaled).astype(self.loss.dtype)

    def unscaled(self, gradient):
        if gradient is None:
            return None
        return sparse_rows.map_values(
            lambda g: g / self.scale_loss(jax.numpy.ones((), g.dtype)), gradient
        )

    def value_and_gradient(self, function, wrt):
        single = not isinstance(wrt, (list, tuple))
        leaves = [wrt] if single else list(wrt)
        variables = [isinstance(leaf, keras.Variable) for leaf in leaves]
        fallback = self._state_values()

        def objective(values):
            substitutions = [
                (leaf, value)
                for leaf, value, is_variable in zip(leaves, values, variables)
                if is_variable
            ]
            given = [
                leaf if is_variable else value
                for leaf, value, is_variable in zip(leaves, values, variables)
            ]
            # The variables read their traced values in every pass inside.
            scope = (
                stateless.substituted(
                    self.model, substitutions, keep_updates=False, fallback=fallback
                )
                if substitutions
                else contextlib.nullcontext()
            )
            with scope:
                return function(given[0] if single else given)

        values = [
            leaf.value if is_variable else leaf
            for leaf, is_variable in zip(leaves, variables)
        ]
        discarding, self._discard_updates = self._discard_updates, True
        try:
            (_, value), gradients = jax.value_and_grad(objective, has_aux=True)(
                jax.lax.stop_gradient(values)
            )
        finally:
            self._discard_updates = discarding
        gradients = [jax.lax.stop_gradient(g) for g in gradients]
        return value, gradients[0] if single else gradients

    def scale_loss(self, loss):
        optimizer = self.model.optimizer
        if optimizer is None:
            return loss
        with keras.StatelessScope(state_mapping=self._optimizer_values()):
            return optimizer.scale_loss(loss)

    def seed(self, generator):
        """Returns a JAX key for one draw: the generator's, this step's, this draw's.

        The key folds the optimizer's step count and the draw's index within
        the step into the generator's (never advanced) state. The count is the
        optimizer's ``iteration`` variable, which advances at every train step
        (with ``gradient_accumulation_steps``, ``optimizer.iterations`` is a
        quotient computed from it, not a variable of the step's state).
        """
        iterations = _step_counter(self.model.optimizer)
        values = dict((id(v), value) for v, value in self._optimizer_values())
        count = values.get(id(iterations))
        if count is None:
            count = iterations.value
        key = jax.random.fold_in(generator.state.value, count)
        key = jax.random.fold_in(key, self._draws)
        self._draws += 1
        return key

    def log(self, name, value):
        # A custom train step that calls compute_loss outside a StatelessScope
        # has no place to keep metric updates: there is nothing to log into.
        metric = self._metrics.get(name)
        if metric is not None:
            if keras_internals.stateless_scope_value(metric.variables[0]) is None:
                return
        super().log(name, value)

    def _state_values(self):
        state = self._recorder.state
        if state is None:
            return []
        model = self.model
        return (
            list(zip(model.trainable_variables, state[0]))
            + list(zip(model.non_trainable_variables, state[1]))
            + list(zip(model.metrics_variables, state[3]))
        )

    def _optimizer_values(self):
        """Returns ``(variable, value)`` pairs of the optimizer's state in this step."""
        if self._recorder.state is None:
            return []
        return list(zip(self.model.optimizer.variables, self._recorder.state[2]))


def _step_counter(optimizer):
    """Returns the optimizer's variable counting train steps.

    A `keras.optimizers.LossScaleOptimizer`'s own ``iteration`` never moves
    (its ``iterations`` are the inner optimizer's): take the inner one's, or
    every step of a mixed_float16 model would repeat the same draws.
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        return _step_counter(inner)
    for variable in optimizer.variables:
        if variable.name == "iteration":
            return variable
    return optimizer.iterations


def like_variable(value, variable):
    """Returns ``value`` laid out like ``variable`` where a distribution shards it.

    Under `keras.distribution.ModelParallel` a variable sharded by the layout
    map (an embedding matrix split over devices) has a gradient, and an FGM
    direction, of its shape. Left to itself the compiler replicated the
    direction on every device (measured: each of 2 devices held the whole
    vocabulary x dim matrix); constrained like the variable, each device holds
    its own rows, which is what lets a vocabulary that fits on no single
    device be perturbed.

    Args:
        value: A tensor shaped like ``variable``.
        variable: A Keras variable; without a layout (no distribution, or
            one that does not lay it out) ``value`` is returned as is.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or not isinstance(variable, keras.Variable):
        return value
    layout = distribution.get_variable_layout(variable)
    sharding = getattr(layout, "backend_layout", layout)
    if not isinstance(sharding, jax.sharding.Sharding):
        return value
    return jax.lax.with_sharding_constraint(value, sharding)
