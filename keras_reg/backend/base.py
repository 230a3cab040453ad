"""The interface a regulariser sees inside one training step, on every backend.

The contract: six framework primitives (abstract, one implementation per
backend), and composites written once over them. A backend overrides a
composite only where speed needs it, and ``tests/test_step_overrides.py``
checks each override against the generic method.

Primitives (abstract):

    method              returns                            called by
    ------------------  ---------------------------------  -------------------------
    scale_loss          loss times the optimizer's loss    unscaled; the PGD, FreeLB
                        scale (mixed precision)            and FreeFGM objectives;
                                                           SAM / AWP
    loss_gradients      d (scaled clean loss) / d v of     loss_gradient (FGM, PGD),
                        the step's own pass, one backward  penalty_gradients,
                        pass, constant or differentiable   the adversaries' clean
                                                           term, SAM / AWP
    output_gradients    d loss (or of(y_pred)) / d each    FreeLB, gradient penalty,
                        lookup output of a layer           noise penalty
    input_gradients     d of(y_pred) / d x                 input gradient penalty,
                                                           noise penalty
    training_loss       loss (and output) of one more      loss_with_perturbation,
                        training pass: inputs replaced,    FreeLB, noise, SAM / AWP,
                        a layer's output transformed, or   R-Drop
                        variables at w + delta
    value_and_gradient  a function's value and the         PGD's ascent, FreeLB's
                        constant gradient of its           ascent, FreeFGM's carried
                        objective w.r.t. tensors or        direction, gradient_of
                        variables                          (VAT, per-task gradients)

Composites (concrete, over the primitives) and their overrides:

    method                    over                      overridden by
    ------------------------  ------------------------  ----------------------------
    loss_gradient             loss_gradients,           JAX (counts reads: unused
                              global_sum                variable error; sharding)
    matrix_gradient,          loss_gradient,            JAX, torch (a plain lookup:
    matrix_loss_gradients     value_and_gradient,       d loss / d its output,
                              loss_gradients            summed per id: SparseRows)
    penalty_gradients         loss_gradients, unscaled  -
    matrix_penalty_gradient   penalty_gradients         JAX, torch (as matrix_gradient)
    loss_with_perturbation    training_loss             _plain_lookup / _rows (TF,
                                                        JAX, torch: E[ids] + d[ids])
    loss_plus_gradient_norm   penalty_gradients,        JAX (forward over reverse)
                              loss_plus
    gradient_of               value_and_gradient        -
    scale_to_norm,            keras.ops (SparseRows     TF (sparse rows, IndexedSlices)
    clip_to_norm, dense,      too: backend/rows.py)
    add_perturbations,
    squared_norm, linear_loss,
    rows_or_dense
    frobenius_norm            keras.ops                 TF (l2_loss), torch
                                                        (vector_norm): no temporary
    clean_loss, clean_output, the trainer's loss        JAX (the recomputed clean
    loss_plus                                           pass stands in for it)
    lookup_outputs            forward                   TF, torch (the recorded
                                                        outputs of the step's pass)
    replicas, global_sum,     identities on one device  TF (tf.distribute replicas)
    global_mean, all_gather,
    shard, draw_per_example

The regularisers' own composites (PGD's projected ascent, FreeLB's averaged
ascent, FreeFGM's carried direction, SAM / AWP's ``w + e(w)``, R-Drop's
second pass) live with them in `keras_reg.training`.
"""

import abc

from keras_reg._compat import keras
from keras_reg.backend import rows as sparse_rows
from keras_reg.backend.interception import transformed_output

NO_LOOKUP = (
    "Layer {name!r} did not look anything up in the step's forward pass (no "
    "call mapping token ids to vectors), so there is no embedding output to "
    "differentiate. Is it the embedding layer the model's inputs go through?"
)


def is_lookup(output, inputs):
    """Whether a layer call mapped ids to vectors: one more axis out than in.

    bert4keras's ``Embedding`` is also called as an output head on hidden
    states (same rank in and out); token ids may arrive as floats (a tf_keras
    ``Input`` is float32 by default).
    """
    in_shape = getattr(inputs, "shape", None)
    return in_shape is not None and len(output.shape) == len(in_shape) + 1


def finite_or_zero(step, gradients):
    """Returns ``gradients``, or zeros of their shapes if any entry is not finite.

    A penalty on a non-finite gradient (a NaN label) must not spread NaN
    further than the plain step does: squaring the NaN gradient and
    differentiating it would carry NaN into every weight the gradient
    depends on. Zeroed (with ``where``, whose zero cotangent stays zero),
    the penalty adds nothing and the step is NaN exactly where the plain one
    is; with mixed precision, the plain gradient's overflow still makes the
    step non-finite, so a ``LossScaleOptimizer`` skips it as usual.
    """
    ops = keras.ops
    usable = ops.isfinite(sum(step.squared_norm(g) for g in gradients))

    def masked(gradient):
        if gradient is None:
            return None
        if sparse_rows.is_rows(gradient):
            return sparse_rows.map_values(lambda v: ops.where(usable, v, 0.0), gradient)
        if hasattr(gradient, "dense_shape"):  # tf.IndexedSlices
            values = ops.where(usable, gradient.values, 0)
            return type(gradient)(values, gradient.indices, gradient.dense_shape)
        return ops.where(usable, gradient, ops.zeros_like(gradient))

    return [masked(g) for g in gradients]


def _scaled(gradient, epsilon):
    """``epsilon * gradient / ||gradient||``, dense (see `Step.scale_to_norm`)."""
    ops = keras.ops
    # In float32: squaring a float16 gradient of the scaled loss overflows.
    gradient = ops.cast(gradient, "float32")
    norm = ops.sqrt(ops.sum(ops.square(gradient)))
    usable = ops.logical_and(ops.isfinite(norm), norm > 0)
    scale = ops.divide_no_nan(ops.cast(epsilon, gradient.dtype), norm)
    return ops.where(usable, gradient * scale, ops.zeros_like(gradient))


def _clipped(perturbation, epsilon):
    """A dense tensor projected onto ``||r|| <= epsilon`` (see `Step.clip_to_norm`)."""
    ops = keras.ops
    peak = ops.max(ops.abs(perturbation))
    norm = peak * ops.sqrt(ops.sum(ops.square(ops.divide_no_nan(perturbation, peak))))
    epsilon = ops.cast(epsilon, perturbation.dtype)
    scale = ops.where(norm > epsilon, ops.divide_no_nan(epsilon, norm), 1.0)
    return perturbation * ops.cast(scale, perturbation.dtype)


_UNUSED = (
    "The training loss does not depend on variable {name!r}: is the layer used "
    "by the model's forward pass?"
)


class Step(abc.ABC):
    """One training step, as seen by a `keras_reg.training.TrainingRegularizer`.

    The compiled model has just run its ordinary forward pass on the batch and
    computed ``loss`` (the compiled loss with sample weights, plus the model's
    regularisation losses). A regulariser returns the loss the optimizer should
    differentiate instead, using the primitives below; the backend guarantees
    that the weights the optimizer updates are the unperturbed ones, bit for
    bit: a perturbation is either never written to a variable (a value
    substituted in the pass, or added to a layer's output) or undone by
    copying saved values back, never by subtracting.

    Attributes:
        model: The model being trained.
        x: The batch's inputs.
        y: The batch's targets.
        sample_weight: The batch's sample weights, or None.
        y_pred: The model's output on ``x`` in the step's own forward pass.
        loss: The ordinary (clean) training loss of the batch.
    """

    def __init__(
        self,
        model,
        recorder,
        x,
        y,
        sample_weight,
        loss,
        compute_loss,
        metrics=None,
        y_pred=None,
        states=None,
    ):
        self.model = model
        self.x = x
        self.y = y
        self.y_pred = y_pred
        self.sample_weight = sample_weight
        self.loss = loss
        self._recorder = recorder
        self._compute_loss = compute_loss
        self._metrics = metrics or {}
        self._states = states or {}
        self._loss_gradient = {}  # id(variable) -> `loss_gradient`'s result

    def log(self, name, value):
        """Adds ``value`` to the ``fit`` log ``name`` (averaged over the epoch).

        Args:
            name: One of the regulariser's `logged_terms`.
            value: A scalar tensor; it is not differentiated.
        """
        if name not in self._metrics:
            raise KeyError(
                f"{name!r} is not one of the regulariser's logged_terms() "
                f"({', '.join(self._metrics) or 'none'})."
            )
        self._metrics[name].update_state(self._constant(value))

    def clean_loss(self):
        """Returns the clean loss to optimize: `loss`, or an equal recomputed one.

        A regulariser that optimizes the clean loss together with another term
        (``add_clean_loss``) takes it from here, not from `loss`. On JAX, once
        a primitive has recomputed the clean pass to differentiate it, this is
        that pass's loss: the trainer's own pass then feeds nothing that is
        differentiated, and XLA can drop it (see `clean_output`).
        """
        return self.loss

    def clean_output(self):
        """Returns the model's output from a recomputed clean pass, or None.

        The same values as `y_pred` (same inputs, weights, dropout mask). The
        installer hands it to the trainer's metrics in place of the trainer's
        own ``y_pred`` (JAX), so that the trainer's forward pass, feeding
        nothing else, is removed by XLA instead of run twice.
        """
        return None

    def loss_plus(self, term):
        """Returns ``loss + term / replicas``, the term cast to the loss's dtype.

        ``term`` is a value of the global batch, the same on every replica
        (taken with `global_sum` / `global_mean` where it depends on the
        batch); the framework sums the replicas' gradients, so each replica
        adds its share, as Keras scales its own loss. Regularisers compute
        their terms in float32; tf_keras computes a mixed-precision loss in
        float16 (Keras 3's is float32 already).
        """
        if self.replicas() > 1:
            term = term / self.replicas()
        dtype = getattr(self.loss, "dtype", None)
        if dtype is not None:
            term = keras.ops.cast(term, keras.backend.standardize_dtype(dtype))
        return self.loss + term

    # ---- the global batch: reductions across replicas ------------------------
    # Under a data-parallel strategy that runs the step once per replica on its
    # shard of the global batch (tf.distribute), every norm, mean or draw "over
    # the batch" must be taken over the global batch, or the maths changes
    # with the number of devices. Where the framework's arrays are already
    # global (JAX under keras.distribution, one device), these are identities.

    def replicas(self):
        """Returns the number of replicas whose shards make the global batch."""
        return 1

    def replica_index(self):
        """Returns this replica's index (0 .. replicas - 1), a scalar tensor or int."""
        return 0

    def global_sum(self, value):
        """Returns the sum of ``value`` over the replicas (differentiable).

        Args:
            value: A tensor, the same shape on every replica (a
                `tf.IndexedSlices` on TensorFlow: its rows are concatenated).
        """
        return value

    def global_mean(self, value):
        """Returns the mean of ``value`` over the replicas (differentiable).

        For a mean over this replica's shard of the batch, the mean over the
        global batch (replicas hold shards of one size).
        """
        if self.replicas() == 1:
            return value
        return self.global_sum(value) / self.replicas()

    def all_gather(self, value):
        """Returns the replicas' ``value`` concatenated on axis 0, in replica order."""
        return value

    def shard(self, value):
        """Returns this replica's rows of a global-batch tensor (axis 0).

        With `draw_per_example`, every replica draws the same global tensor
        and keeps its own rows, so each replica draws distinct values and the
        global batch sees exactly what one device would draw.
        """
        count = self.replicas()
        if count == 1:
            return value
        size = keras.ops.shape(value)[0] // count
        start = self.replica_index() * size
        return keras.ops.slice(
            value,
            [start] + [0] * (len(value.shape) - 1),
            [size, *keras.ops.shape(value)[1:]],
        )

    def draw_per_example(self, draw, shape):
        """Returns this replica's rows of ``draw(global_shape)``.

        Args:
            draw: ``draw(shape) -> tensor``, a random draw (same seed on every
                replica).
            shape: The shape of the draw for this replica's shard (batch first).
        """
        if self.replicas() == 1:
            return draw(shape)
        shape = tuple(shape)
        return self.shard(draw((shape[0] * self.replicas(), *shape[1:])))

    def _constant(self, value):
        return keras.ops.stop_gradient(keras.ops.cast(value, "float32"))

    @abc.abstractmethod
    def loss_gradients(self, variables, differentiable=False):
        """Returns d (scaled clean loss) / d v for each variable, this replica's share.

        The gradients of the step's own clean pass (same inputs, weights and
        dropout mask: TensorFlow and PyTorch read them off the trainer's pass,
        JAX recomputes it), all taken in one backward pass, of ``loss`` times
        the optimizer's loss scale (mixed precision: scaling keeps float16
        gradients from underflowing; `unscaled` divides it out). A non-finite
        gradient makes whatever is built from it, hence the step's loss,
        non-finite, and a ``LossScaleOptimizer`` skips the step.

        Args:
            variables: Variables the regulariser declared as watched.
            differentiable: Keep the gradients differentiable, for a penalty
                inside the loss (double backprop: TF nested tapes, torch
                ``create_graph``, JAX ``grad`` inside the loss); otherwise
                they are constants.

        Returns:
            A list: sparse where the framework is (a `tf.IndexedSlices` for
            an embedding matrix on TensorFlow), None where the loss does not
            use a variable (zeros on JAX). Each replica's share, as the
            framework would sum it: take `global_sum` for the global batch's.
        """

    def loss_gradient(self, variable):
        """Returns d (scaled clean loss) / d variable of the global batch (constant).

        Sparse where the framework is (see `loss_gradients`); the same
        gradient for every call in the step. Used for an adversary's
        direction, which is invariant to the loss scale.

        Args:
            variable: A variable that the regulariser declared as watched.

        Raises:
            ValueError: The training loss does not use ``variable``.
        """
        key = id(variable)
        if key not in self._loss_gradient:
            (gradient,) = self.loss_gradients([variable])
            if gradient is None:
                raise ValueError(_UNUSED.format(name=variable.name))
            # Each replica's loss is its shard's share of the global loss
            # (Keras divides by the replicas): their sum is the global gradient.
            self._loss_gradient[key] = self.global_sum(gradient)
        return self._loss_gradient[key]

    def matrix_gradient(self, layer, variable, perturbation=None):
        """Returns d (scaled loss) / dE of the global batch, E an embedding matrix.

        Without ``perturbation``, the step's clean pass (`loss_gradient`);
        with one, one more training pass at ``E + perturbation``
        (`loss_with_perturbation`, keeping no non-trainable updates) that only
        E is differentiated in: PGD's ascent. A constant, for a direction
        (invariant to the loss scale).

        Sparse where the framework is: a `tf.IndexedSlices` on TensorFlow; on
        JAX and PyTorch, where ``layer`` is a plain lookup (`_plain_lookup`),
        the gradient with respect to the lookup's output (one row per token
        occurrence, the same backward pass) summed per id into `SparseRows`
        (static shapes: the distinct ids ascending, then zero padding rows):
        the dense gradient's non-zero rows, without a ``vocabulary x dim``
        tensor. `scale_to_norm`, `add_perturbations`, `clip_to_norm`,
        `loss_with_perturbation` and `linear_loss` take that form.

        Args:
            layer: The embedding layer owning ``variable``.
            variable: Its matrix, a variable the regulariser declared as
                watched.
            perturbation: None, or a constant shaped like ``variable`` (or a
                result of `scale_to_norm` / `clip_to_norm`).
        """
        if perturbation is None:
            return self.loss_gradient(variable)

        def objective(_):
            loss = self.loss_with_perturbation(
                layer, variable, perturbation, keep_updates=False
            )
            return self.scale_loss(loss), None

        _, (gradient,) = self.value_and_gradient(objective, [variable])
        if gradient is None:
            return keras.ops.zeros_like(variable.value)
        # The replicas' shares summed: the global batch's gradient.
        return self.global_sum(gradient)

    def matrix_loss_gradients(self, layer, variable, variables):
        """Returns `loss_gradients` (constant), the matrix's as `matrix_gradient`'s.

        Each replica's share of d (scaled clean loss) / d v, all in one
        backward pass, the gradient of ``variable`` (an embedding matrix in
        ``variables``) as rows where the backend takes it so (`SparseRows`
        on JAX and PyTorch for a plain lookup): for a clean term that
        `linear_loss` adds, and a direction taken from the same pass.

        Args:
            layer: The embedding layer owning ``variable``.
            variable: Its matrix, one of ``variables``.
            variables: Variables the regulariser declared as watched.
        """
        del layer, variable
        return self.loss_gradients(variables)

    def matrix_penalty_gradient(self, layer, variable):
        """Returns dL/dE of the global batch, differentiable, E an embedding matrix.

        `penalty_gradients` of one matrix, for a penalty on it (double
        backprop); as rows where the backend takes them so: on JAX and
        PyTorch, where ``layer`` is a plain lookup, the differentiable
        gradients at the lookup's outputs summed per id (`SparseRows`, see
        `matrix_gradient`), without a ``vocabulary x dim`` tensor.

        Args:
            layer: The embedding layer owning ``variable``.
            variable: Its matrix, a variable the regulariser declared as
                watched.
        """
        del layer
        return self.penalty_gradients([variable])[0]

    def penalty_gradients(self, variables):
        """Returns dL/dv of the global batch for each variable, differentiable.

        For a penalty inside the loss (double backprop), unscaled so that
        squaring it is safe (see `loss_gradients`; None where unused).

        Args:
            variables: Variables the regulariser declared as watched.
        """
        return [
            None if g is None else self.global_sum(self.unscaled(g))
            for g in self.loss_gradients(variables, differentiable=True)
        ]

    def dense(self, gradient, variable=None):
        """Returns ``gradient`` dense, or zeros like ``variable`` for None.

        The generic composites take dense gradients: a backend whose
        gradients are sparse (TensorFlow's `tf.IndexedSlices`) densifies here,
        and overrides the composites where the sparse form is faster.
        `SparseRows` (see `matrix_gradient`) are scattered into a matrix
        shaped like ``variable``.
        """
        if gradient is None:
            return keras.ops.zeros_like(variable.value)
        if sparse_rows.is_rows(gradient):
            return sparse_rows.densified(gradient, tuple(variable.shape))
        return gradient

    def rows_or_dense(self, gradient, variable):
        """Returns ``gradient`` as `SparseRows` where it is sparse, else dense.

        For a method that builds a perturbation of every weight from the
        gradients (SAM, AWP): the matrix of a plain lookup keeps the batch's
        rows only, every other gradient is dense (zeros for None). `SparseRows`
        stay as they are; the TensorFlow backend sums a `tf.IndexedSlices`'
        repeated rows into `SparseRows`.

        Args:
            gradient: A gradient of ``variable`` (`loss_gradients`,
                `matrix_loss_gradients`), or None.
            variable: Its variable.
        """
        if sparse_rows.is_rows(gradient):
            return gradient
        return self.dense(gradient, variable)

    @abc.abstractmethod
    def scale_loss(self, loss):
        """Returns ``loss`` times the optimizer's loss scale (mixed precision)."""

    def scale_to_norm(self, gradient, epsilon):
        """Returns ``epsilon * gradient / ||gradient||_F`` (0 where the norm is 0).

        The norm is taken over the whole tensor. For a sparse gradient, repeated
        rows are summed first, so the result equals the dense computation (the
        TensorFlow backend's override for a `tf.IndexedSlices`; `SparseRows`
        are summed already, and stay `SparseRows`). A zero or non-finite norm
        (a NaN loss) gives no perturbation at all.
        """
        if not sparse_rows.is_rows(gradient):
            gradient = keras.ops.convert_to_tensor(self.dense(gradient))
        return sparse_rows.map_values(lambda g: _scaled(g, epsilon), gradient)

    def loss_with_perturbation(
        self, layer, variable, perturbation, keep_updates=True, added=(), frozen=()
    ):
        """Returns the training loss of the batch with ``variable + perturbation``.

        One more training-mode pass (`training_loss`) with ``layer``'s
        ``variable`` perturbed, leaving the variable as it was, bit for bit.
        The returned loss is differentiable with respect to every trainable
        weight, at the perturbed point; ``perturbation`` is a constant (the
        `SparseRows` of `scale_to_norm` where it gave them).

        Where the layer is a plain lookup whose matrix nothing else reads
        (`_plain_lookup`), the layer's output ``E[ids]`` becomes
        ``E[ids] + delta[ids]``: the same numbers, without a second matrix.

        Args:
            layer: The layer owning ``variable`` (an embedding layer).
            variable: The perturbed variable.
            perturbation: A constant shaped like ``variable``, or its rows.
            keep_updates: Keep the pass's non-trainable updates (see
                `training_loss`).
            added: More ``(variable, delta)`` pairs for the same pass (other
                variables than ``variable``; see `training_loss`).
            frozen: Non-trainable variables whose updates in the pass are
                discarded (see `training_loss`).
        """
        perturbation = keras.tree.map_structure(
            keras.ops.stop_gradient, perturbation
        )
        if self._plain_lookup(layer, variable):

            def add_rows(output, ids):
                rows = self._rows(perturbation, ids)
                return output + keras.ops.cast(rows, output.dtype)

            return self.training_loss(
                layer=layer,
                transform=add_rows,
                keep_updates=keep_updates,
                added=added,
                frozen=frozen,
            )
        return self.training_loss(
            added=[(variable, perturbation), *added],
            keep_updates=keep_updates,
            frozen=frozen,
        )

    def _plain_lookup(self, layer, variable):
        """Whether adding ``delta[ids]`` to the layer's output is adding delta to E."""
        return False

    def _rows(self, perturbation, ids):
        """The rows of a perturbation matrix at ``ids`` (see `scale_to_norm`)."""
        return sparse_rows.lookup(perturbation, ids)

    @abc.abstractmethod
    def output_gradients(self, layer, of=None):
        """Returns dL/d(output) for each lookup of ``layer`` in the step's pass.

        With ``of``, the gradients of ``of(y_pred)`` (a scalar function of the
        model's output in the step's pass) instead of the loss's.

        The outputs are those of the layer's lookups (`is_lookup`) in the
        step's own forward pass (one tensor per call: a shared embedding called
        on two inputs gives two): for an embedding layer, one gradient per token
        occurrence. Differentiable and unscaled, as `penalty_gradients`.

        Args:
            layer: A layer the regulariser declared in ``watched_outputs``.
            of: Optional ``of(y_pred) -> scalar`` to differentiate instead of
                the loss (not scaled: it is not the loss).
        """

    @abc.abstractmethod
    def input_gradients(self, of):
        """Returns d of(y_pred) / d x for each float input tensor of the batch.

        ``of`` is a scalar function of the model's output in the step's own
        forward pass; the gradients are differentiable (double backprop). The
        regulariser must declare ``watches_inputs``.

        Args:
            of: ``of(y_pred) -> scalar``.

        Returns:
            A list, one gradient per float tensor of ``x`` (in
            ``keras.tree.flatten`` order).
        """

    @abc.abstractmethod
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
        """Returns the training loss of one more training-mode pass on the batch.

        The pass draws fresh random numbers (an independent dropout mask) and
        keeps its non-trainable updates, like the step's own pass; the loss is
        differentiable with respect to every trainable weight, at the point
        the pass ran at. Every variable holds its own value, bit for bit, when
        it returns (values substituted in the pass, or saved values copied
        back; never subtracted).

        Args:
            x: Inputs to use instead of the batch's (same structure).
            layer: A layer whose output ``transform(output, inputs)`` replaces.
            transform: See ``layer``.
            added: ``(variable, delta)`` pairs: the pass runs at
                ``variable + delta`` (the deltas are constants; on TensorFlow
                a delta may be `scale_to_norm`'s sparse rows).
            frozen: Non-trainable variables whose updates in the pass are
                discarded (e.g. BatchNormalization's moving statistics).
            keep_updates: Whether the pass keeps its non-trainable updates on
                JAX and PyTorch (TensorFlow always keeps them; inside
                `value_and_gradient` JAX never does).
            with_output: Return ``(y_pred, loss)`` instead of the loss.
        """

    def linear_loss(self, loss, variables, gradients):
        """Returns a loss whose value is ``loss`` and whose gradient is ``gradients``.

        ``stop(loss) + (s - stop(s))`` with ``s = sum_i <g_i, v_i>``: the
        difference is exactly 0 and ``d s / d v_i = g_i`` exactly, so the
        optimizer applies ``gradients`` (taken by `value_and_gradient`)
        while the step's own backward pass costs one product per weight.

        Args:
            loss: The value to report.
            variables: Variables, each with its gradient in ``gradients``
                (None: skipped; non-trainable ones are skipped too).
            gradients: Constant gradients.
        """
        ops = keras.ops
        total = ops.zeros((), "float32")
        for variable, gradient in zip(variables, gradients):
            if gradient is None or not variable.trainable:
                continue
            total = total + self._inner_product(gradient, variable)
        loss = ops.stop_gradient(ops.cast(loss, "float32"))
        return loss + (total - ops.stop_gradient(total))

    def _inner_product(self, gradient, variable):
        ops = keras.ops
        if sparse_rows.is_rows(gradient):
            rows = sparse_rows.matrix_rows(variable.value, gradient.rows)
            values = ops.stop_gradient(ops.cast(gradient.values, "float32"))
            return ops.sum(values * ops.cast(rows, "float32"))
        value = ops.cast(variable.value, "float32")
        gradient = ops.cast(self.dense(gradient, variable), "float32")
        return ops.sum(ops.stop_gradient(gradient) * value)

    def add_perturbations(self, first, second):
        """Returns ``first + second`` of two results of `scale_to_norm` (or sums).

        Two `SparseRows` give `SparseRows`, repeated rows summed; with a
        dense one, a dense sum.
        """
        if sparse_rows.is_rows(first) and sparse_rows.is_rows(second):
            return sparse_rows.add(first, second)
        if sparse_rows.is_rows(first):
            first, second = second, first
        if sparse_rows.is_rows(second):
            return first + sparse_rows.densified(second, tuple(first.shape))
        return first + second

    def clip_to_norm(self, perturbation, epsilon):
        """Returns the projection of ``perturbation`` onto ``||r||_F <= epsilon``.

        ``perturbation * min(1, epsilon / ||perturbation||)``, the norm over the
        whole tensor (a sparse perturbation's rows, each once). The norm is
        taken of the tensor divided by its largest entry, so a perturbation
        whose squares overflow (a huge ascent step) is still projected.
        """
        return sparse_rows.map_values(lambda r: _clipped(r, epsilon), perturbation)

    def iteration(self):
        """Returns the optimizer's iteration count (0 at the first step), float32."""
        return keras.ops.cast(self.model.optimizer.iterations, "float32")

    def state(self, name):
        """Returns the carried state ``name`` (`TrainingRegularizer.carried_state`).

        A variable, zero when the regulariser is installed, that keeps what one
        training step assigns to it for the next (also on JAX, whose step is a
        pure function of its state: the variable is part of that state). It is
        not one of the model's weights: never in ``model.weights``,
        ``get_weights`` or a weights file.
        """
        return self._states[name]

    def lookup_shapes(self, layer):
        """Returns the shape of each lookup output of ``layer`` in the step's pass.

        ``layer`` must be one of the regulariser's ``watched_outputs``.
        """
        raise NotImplementedError

    def lookup_outputs(self, layer):
        """Returns the output of each lookup of ``layer`` on the batch, constants.

        The embedded sequence (one tensor per call, as `lookup_shapes`), e.g.
        to measure the size of what a perturbation is added to. This default
        runs one more inference pass; a backend that records the step's own
        outputs returns those (TensorFlow, PyTorch: ``layer`` must then be one
        of the regulariser's ``watched_outputs``).
        """
        outputs = []

        def record(output, inputs):
            if is_lookup(output, inputs):
                outputs.append(keras.ops.stop_gradient(output))
            return output

        self.forward(self.x, layer=layer, transform=record)
        if not outputs:
            raise ValueError(NO_LOOKUP.format(name=layer.name))
        return outputs

    def loss_plus_gradient_norm(self, variables, weight, table=None):
        """Returns ``(L + weight * ||dL/dv||^2, penalty)``, double backprop included.

        The loss the optimizer should differentiate: its gradient with respect
        to every trainable weight is ``dL/dw + 2 weight H v`` with H the
        Hessian of L and v the gradient dL/dv placed on ``variables`` (zero
        elsewhere): the penalty's own gradient is never dropped. This default
        takes `penalty_gradients` and `loss_plus` (reverse over reverse); a
        backend may compute ``H v`` forward over reverse instead (JAX).

        Args:
            variables: Trainable variables whose gradient's squared norm is
                the penalty.
            weight: The penalty's factor (a Python float).
            table: None, or ``(layer, matrix)``: an embedding among the
                trainable variables whose gradient a backend may take as the
                batch's rows where the layer is a plain lookup (JAX).

        Returns:
            ``(loss, penalty)``: the loss to optimize and the penalty's value
            (the global batch's: the term that `loss_plus` adds).
        """
        gradients = finite_or_zero(self, self.penalty_gradients(variables))
        penalty = weight * sum(self.squared_norm(g) for g in gradients)
        return self.loss_plus(penalty), penalty

    def squared_norm(self, gradient):
        """Returns the float32 sum of squares of ``gradient`` (0 for None).

        A sparse gradient's repeated rows are summed first, so the result is
        the squared Frobenius norm of the dense gradient.
        """
        if gradient is None:
            return keras.ops.zeros((), "float32")
        if sparse_rows.is_rows(gradient):
            gradient = gradient.values
        gradient = keras.ops.cast(self.dense(gradient), "float32")
        return keras.ops.sum(keras.ops.square(gradient))

    def frobenius_norm(self, value):
        """Returns ``||value||_F`` (all entries), float32, without a temporary.

        For the norm of a whole weight (AWP's ``||w||``): at a large
        vocabulary ``square(value)`` would be a second table. Here the
        flattened square is summed (XLA fuses the two, JAX under ``jit``); the
        TensorFlow backend uses ``l2_loss`` and the PyTorch backend
        ``linalg.vector_norm``, one kernel each. (A dot product of the
        flattened value with itself also allocates nothing, but on
        TensorFlow its float32 accumulation was 7% off at 64M entries.)
        """
        flat = keras.ops.reshape(keras.ops.cast(value, "float32"), (-1,))
        return keras.ops.sqrt(keras.ops.sum(keras.ops.square(flat)))

    @abc.abstractmethod
    def value_and_gradient(self, function, wrt):
        """Returns ``function``'s value and the gradient of its objective.

        ``function(wrt)`` returns ``(objective, value)``; the result is
        ``(value, d objective / d wrt)``. One forward and one backward pass
        through whatever ``function`` runs (extra passes with `training_loss`,
        `loss_with_perturbation`, `forward`); the step's own pass is not
        differentiated. ``value`` stays differentiable with respect to the
        model's weights that are not in ``wrt`` (a step may return it, or a sum
        of such losses); the gradient is a constant.

        Inside ``function`` the passes keep no non-trainable updates on JAX
        (the function is traced for ``jax.grad``); on PyTorch and TensorFlow
        a pass keeps them as its ``keep_updates`` says.

        Args:
            function: ``function(wrt) -> (objective, value)``, the objective a
                scalar (scale it with `scale_loss` where it is a loss).
            wrt: A tensor, a variable of the model, or a list of them. A
                tensor is handed to ``function`` as a fresh differentiable
                copy; a variable is handed as itself, and the passes that read
                it are differentiated (on JAX its value is substituted).

        Returns:
            ``(value, gradients)``: ``gradients`` shaped like ``wrt``; for a
            tensor a dense tensor (zeros where the objective does not use
            it); for a variable sparse where the framework is (a
            `tf.IndexedSlices` for an embedding matrix) and None where the
            objective does not use it (zeros on JAX).
        """

    def gradient_of(self, function, value):
        """Returns d function(value) / d value, a dense constant shaped like ``value``.

        Used by power iterations (VAT) and per-task gradients; see
        `value_and_gradient`.
        """
        _, gradient = self.value_and_gradient(lambda v: (function(v), None), value)
        return gradient

    def unscaled(self, gradient):
        """Returns a gradient of the scaled loss divided by the loss scale (or None)."""
        if gradient is None:
            return None
        ops = keras.ops
        factor = self.scale_loss(ops.ones((), "float32"))
        return sparse_rows.map_values(
            lambda g: self.dense(g) / ops.cast(factor, g.dtype), gradient
        )

    def seed(self, generator):
        """Returns the ``seed`` argument of one random draw in this step.

        Args:
            generator: A `keras.random.SeedGenerator` owned by the regulariser
                (not by the model).

        Returns:
            ``generator`` itself where its state can advance inside the step
            (TensorFlow, PyTorch); a backend may instead return a seed derived
            from the generator and the optimizer's step count (JAX, whose step
            is a pure function of the model's state).
        """
        return generator

    def normal(self, shape, seed):
        """Returns standard normal draws of ``shape`` (float32).

        Args:
            shape: The shape drawn.
            seed: What `seed` returned.
        """
        return keras.random.normal(shape, seed=seed)

    def uniform(self, shape, seed, minval=0.0, maxval=1.0):
        """Returns uniform draws in ``[minval, maxval)`` of ``shape`` (float32).

        Args:
            shape: The shape drawn.
            seed: What `seed` returned.
            minval: The interval's lower end.
            maxval: The interval's upper end (excluded).
        """
        return keras.random.uniform(shape, minval=minval, maxval=maxval, seed=seed)

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
