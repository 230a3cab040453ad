"""Functional perturbation for the JAX and PyTorch backends (Keras 3).

On JAX the train step is a pure function: Keras maps every variable to a
traced value in a `keras.StatelessScope`, and writing to a variable inside the
step is not possible. PyTorch could write in place, but autograd would then
see the write. Both backends therefore perturb by substitution: an extra
forward pass runs in a nested `keras.StatelessScope` that maps *every*
variable of the model to its current value (a partial mapping would read the
values JAX ``fit`` purges from the variables) and the perturbed variable to
``value + delta``. Nothing is written to the perturbed variable, so nothing
needs restoring.

What the extra pass changes besides the loss -- BatchNormalization statistics,
dropout seed states, the compiled loss's per-output trackers -- is written back
to the variables (a recorded update under JAX's enclosing scope, a real one on
PyTorch), as the TensorFlow backend's second forward pass does; a pass that
only recomputes the clean loss for a gradient discards them.

This module only uses Keras; the framework-specific autodiff lives in
``jax.py`` and ``torch.py``.
"""

import contextlib
import weakref

from keras_reg._compat import keras
from keras_reg.backend import base, keras_internals, reads, tracking
from keras_reg.backend import rows as sparse_rows

ops = keras.ops


def _model_variables(model):
    """Returns every variable the model's forward pass and loss may read."""
    unique = {}
    for variable in (
        list(model.trainable_variables)
        + list(model.non_trainable_variables)
        + list(getattr(model, "metrics_variables", []))
    ):
        unique.setdefault(id(variable), variable)
    return list(unique.values())


@contextlib.contextmanager
def substituted(
    model, values=(), start=(), keep_updates=True, fallback=(), discard=()
):
    """Runs the block with the model's variables read from a nested scope.

    Every variable of ``model`` reads its current value (the enclosing scope's,
    under JAX), except the ``start`` and ``values`` pairs, which replace them.
    Layer losses added in the block are collected, so ``model.losses`` inside
    the block is the block's.

    Args:
        model: A built Keras 3 model.
        values: ``(variable, value)`` pairs: the substituted values.
        start: ``(variable, value)`` pairs: non-trainable values to start the
            pass from instead of the current ones (JAX: the values before the
            step's own forward pass, so that dropout draws the same mask).
        fallback: ``(variable, value)`` pairs for the variables that the
            enclosing scope does not map (JAX: the train step's state, for a
            custom step that calls ``compute_loss`` outside a scope, where
            ``fit`` has purged the variables' own values).
        keep_updates: Write the updates made in the block (non-trainable
            state, the compiled loss's per-output trackers) back to the
            variables on exit; otherwise discard them. The substituted values
            are never written back.
        discard: Variables whose updates in the block are not written back
            even with ``keep_updates`` (BatchNormalization statistics).

    Yields:
        The `keras.StatelessScope`.
    """
    variables = _model_variables(model)
    given = {id(v): (v, value) for v, value in list(start) + list(values)}
    backup = {id(v): value for v, value in fallback}

    def current(v):
        if id(v) in backup and keras_internals.stateless_scope_value(v) is None:
            return backup[id(v)]
        return v.value

    mapping = {id(v): given.get(id(v)) or (v, current(v)) for v in variables}
    with keras_internals.own_pass_losses(model):
        with keras.StatelessScope(
            state_mapping=list(mapping.values()), collect_losses=True
        ) as scope:
            before = {id(v): scope.get_current_value(v) for v in variables}
            yield scope
    if keep_updates:
        dropped = {id(v) for v in discard}
        for variable in variables:
            if id(variable) in dropped:
                continue
            value = scope.get_current_value(variable)
            if value is not before[id(variable)]:
                variable.assign(value)


class Step(base.Step):
    """`keras_reg.backend.base.Step` shared by the JAX and PyTorch backends.

    Subclasses provide the autodiff (`loss_gradient`, `value_and_gradient`).
    """

    def scale_loss(self, loss):
        optimizer = self.model.optimizer
        return optimizer.scale_loss(loss) if optimizer is not None else loss

    # Set while a pass runs inside an inner differentiation (JAX), where its
    # non-trainable updates cannot be written to the variables.
    _discard_updates = False

    def training_loss(
        self,
        x=None,
        layer=None,
        transform=None,
        added=(),
        frozen=(),
        keep_updates=True,
        with_output=False,
    ):
        values = [
            (v, ops.add(v.value, ops.cast(ops.stop_gradient(d), v.dtype)))
            for v, d in added
        ]
        return self.pass_loss(
            x=x,
            values=values,
            layer=layer,
            transform=transform,
            keep=keep_updates and not self._discard_updates,
            discard=frozen,
            output="both" if with_output else False,
        )

    def lookup_shapes(self, layer):
        shapes = []

        def record(output, inputs):
            if base.is_lookup(output, inputs):
                shapes.append(tuple(output.shape))
            return output

        self._shape_pass(layer, record)
        if not shapes:
            raise ValueError(base.NO_LOOKUP.format(name=layer.name))
        return shapes

    def _shape_pass(self, layer, record):
        """Runs a pass that only ``record`` observes (abstract on JAX)."""
        self.pass_loss(keep=False, layer=layer, transform=record)

    def pass_loss(
        self,
        values=(),
        start=(),
        layer=None,
        transform=None,
        keep=True,
        around=None,
        x=None,
        output=False,
        discard=(),
    ):
        """Returns the training loss of one extra forward pass on the batch.

        Args:
            values: ``(variable, value)`` pairs substituted in the pass.
            start: Non-trainable ``(variable, value)`` pairs to start from.
            layer: A layer whose output ``transform(output, inputs)`` replaces.
            transform: See ``layer``.
            keep: Keep the pass's non-trainable updates (see `substituted`).
            around: A context manager entered around the forward pass and its
                loss, inside the substituted scope (e.g. `reads.recorded_reads`).
            x: Inputs to use instead of the batch's.
            output: Return the model's output instead of the loss (True), or
                both as ``(y_pred, loss)`` (``"both"``).
            discard: Variables whose updates in the pass are discarded.
        """
        x = self.x if x is None else x
        fallback = self._state_values()
        with substituted(self.model, values, start, keep, fallback, discard), (
            around or contextlib.nullcontext()
        ):
            y_pred = self.forward(x, training=True, layer=layer, transform=transform)
            if output is True:
                return y_pred
            with tracking.quiet_loss_metrics(self.model):
                loss = self._compute_loss(
                    x, self.y, y_pred, self.sample_weight, training=True
                )
            return (y_pred, loss) if output == "both" else loss

    def _state_values(self):
        """Returns ``(variable, value)`` pairs of the train step's own state."""
        return []

    def matrix_gradient(self, layer, variable, perturbation=None):
        """`base.Step.matrix_gradient`: `SparseRows` where the layer is a plain lookup.

        The pass is differentiated with respect to the lookup's outputs, not
        the matrix: the framework's gradient of a lookup is a dense
        ``vocabulary x dim`` matrix (JAX's gradient of a gather, PyTorch's
        ``Embedding`` backward), the outputs' is one row per token occurrence.
        Those rows summed per id (`keras_reg.backend.rows.summed`) are the
        dense gradient's non-zero rows, exactly: E reaches the loss only
        through the lookup. Otherwise (a tied head, an
        ``embeddings_regularizer``, another layer) the dense gradient.
        """
        if not self._plain_lookup(layer, variable):
            return super().matrix_gradient(layer, variable, perturbation)
        if perturbation is not None:
            ids, gradients = self._lookup_gradients(layer, perturbation)
            return self.global_sum(sparse_rows.summed(ids, gradients))
        key = ("rows", id(variable))
        if key not in self._loss_gradient:
            taken = self._clean_lookup_gradients(layer)
            if taken is None:
                return super().matrix_gradient(layer, variable)
            summed = sparse_rows.summed(*taken)
            self._loss_gradient[key] = self.global_sum(summed)
        return self._loss_gradient[key]

    def matrix_loss_gradients(self, layer, variable, variables):
        """`base.Step.matrix_loss_gradients`: the matrix's as in `matrix_gradient`.

        One backward pass of the clean pass to the other variables and to the
        lookup's outputs.
        """
        if not self._plain_lookup(layer, variable):
            return super().matrix_loss_gradients(layer, variable, variables)
        others = [v for v in variables if v is not variable]
        taken = self._clean_lookup_gradients(layer, others)
        if taken is None:
            return super().matrix_loss_gradients(layer, variable, variables)
        ids, gradients, remaining = taken
        summed = sparse_rows.summed(ids, gradients)
        remaining = iter(remaining)
        return [summed if v is variable else next(remaining) for v in variables]

    def matrix_penalty_gradient(self, layer, variable):
        """`base.Step.matrix_penalty_gradient`: rows where the layer is a plain lookup.

        The differentiable gradients at the lookup's outputs of the clean pass,
        summed per id: the dense gradient's non-zero rows (see
        `matrix_gradient`), a penalty on them differentiated through the
        per-occurrence gradients.
        """
        taken = None
        if self._plain_lookup(layer, variable):
            taken = self._penalty_lookup_gradients(layer)
        if taken is None:
            return super().matrix_penalty_gradient(layer, variable)
        return self.global_sum(sparse_rows.summed(*taken))

    def _penalty_lookup_gradients(self, layer):
        """``(ids, gradients)``: d (clean loss) / d each lookup output, differentiable.

        Unscaled (see `penalty_gradients`); None where the backend did not
        record the lookups.
        """
        return None

    def _clean_lookup_gradients(self, layer, variables=()):
        """Returns d (scaled clean loss) / d each lookup output (and ``variables``).

        Of the step's own clean pass (or one with its inputs, weights and
        dropout mask), in one backward pass.

        Returns:
            ``(ids, gradients)``: one pair per lookup of ``layer``; with
            ``variables``, ``(ids, gradients, variable_gradients)`` (None
            where a variable is unused); None where the backend did not
            record the lookups.
        """
        return None

    def _lookup_gradients(self, layer, perturbation):
        """``(ids, gradients)`` of one more pass at E + perturbation (constant).

        d (scaled loss) / d each lookup output of ``layer``, in a training pass
        whose lookups return ``E[ids] + perturbation[ids]`` (as
        `loss_with_perturbation`) and that keeps no non-trainable updates.
        """
        zeros = [ops.zeros(shape, "float32") for shape in self.lookup_shapes(layer)]

        def objective(deltas):
            pending, ids = list(deltas), []

            def add(output, inputs):
                if not base.is_lookup(output, inputs):
                    return output
                ids.append(inputs)
                delta = pending.pop(0) + self._rows(perturbation, inputs)
                return output + ops.cast(delta, output.dtype)

            loss = self.training_loss(layer=layer, transform=add, keep_updates=False)
            return self.scale_loss(loss), ids

        return self.value_and_gradient(objective, zeros)

    def _plain_lookup(self, layer, variable):
        """Whether perturbing the layer's output is perturbing E in every use.

        True when the layer's output is ``E[ids]``, the pass calls the layer
        and nothing else reads E in the pass and its loss (a tied output head,
        an ``embeddings_regularizer`` would): found once per layer by a probe
        pass whose reads of E are counted (`keras_reg.backend.reads`) and whose
        updates are discarded (on JAX it is traced, then removed by XLA as
        unused).
        """
        if type(layer).call is not keras.layers.Embedding.call:
            return False
        if layer not in _ONLY_READ_BY_LOOKUP:
            counts = reads.ReadCounts()
            self.pass_loss(
                keep=False, around=reads.recorded_reads(variable, layer, counts)
            )
            _ONLY_READ_BY_LOOKUP[layer] = counts.outside == 0 and counts.inside > 0
        return _ONLY_READ_BY_LOOKUP[layer]


# Embedding layer -> whether only its own lookup reads its matrix.
_ONLY_READ_BY_LOOKUP = weakref.WeakKeyDictionary()
