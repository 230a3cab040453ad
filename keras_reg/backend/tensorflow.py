"""TensorFlow backend for Keras 3 models (tf_keras reuses it: see tf_keras.py).

Gradients of the clean loss come from a `tf.GradientTape` opened around the
whole train step, so the step's own forward pass is reused (no second clean
forward).

The embedding gradient is a `tf.IndexedSlices` with one row per token
occurrence. Repeated rows are summed, so the maths equals the dense matrix's
while only the touched rows are handled: in graph mode with ``unique`` +
``unsorted_segment_sum``; under XLA (``jit_compile=True``), where ``unique``
is slow on CPU, by a stable sort and a segment sum into as many rows as there
are occurrences (`sum_sorted_rows`: static shapes, nothing of the
vocabulary's size).

A perturbation of the matrix E reaches the perturbed forward pass in one of two
ways:

- for a plain lookup layer (``keras.layers.Embedding``, ``tf_keras``'s), whose
  output is ``E[ids]``, the layer returns ``E[ids] + delta[ids]`` instead:
  the same numbers, nothing written to the variable, no copy of the matrix;
- for any other layer (a tied output head, bert4keras's ``Embedding``), the
  variable is changed in place and the saved values are copied back after the
  pass (never ``w + d - d``, which drifts by rounding).
"""

import contextlib

import tensorflow as tf

from keras_reg._compat import keras
from keras_reg.backend import base, keras_internals
from keras_reg.backend.interception import transformed_output
from keras_reg.backend.rows import PAD, SparseRows
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
    """The tape recording one train step, and the layer outputs it watches.

    Attributes:
        tape: A `tf.GradientTape` opened around the whole train step. Keras's
            own tape opens inside it, so gradients taken from this tape inside
            ``compute_loss`` are recorded by Keras's tape: a penalty built from
            them is differentiated by the step (double backprop).
        outputs: Layer id -> the outputs of that layer's lookups (see
            `base.is_lookup`) in the step's forward pass, each watched.
    """

    def __init__(self, tape, layers, several=False):
        self.tape = tape
        self.several = several
        self.outputs = {id(layer): [] for layer in layers}
        self.inputs = []
        # Only the step's own forward pass is recorded (the Step stops it).
        self.capturing = True

    def capture(self, layer):
        """Returns a `transformed_output` transform that watches the layer's output."""
        outputs = self.outputs[id(layer)]

        def watch(output, inputs):
            if self.capturing and base.is_lookup(output, inputs):
                self.tape.watch(output)
                outputs.append(output)
            return output

        return watch

    def gradient(self, target, sources):
        """``tape.gradient``; a persistent tape stops recording while it runs.

        A tape read once (one regulariser) stops recording when read, as
        TensorFlow does; a tape read by several regularisers stays open and
        does not record the gradients' own ops (the trainer's tape, which
        opens inside it, records them for double backprop).
        """
        if not self.several:
            return self.tape.gradient(target, sources)
        with self.tape.stop_recording():
            return self.tape.gradient(target, sources)


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
    """Records the train step's forward pass for gradients w.r.t. ``variables``.

    Args:
        model: The model being trained (unused here; part of the interface).
        variables: The variables regularisers will differentiate with respect to.
        step_args: The positional arguments of ``train_step`` (unused here).
        layers: Layers whose lookup outputs regularisers differentiate with
            respect to (`Step.output_gradients`).
        inputs: Watch the batch's float inputs (`Step.input_gradients`).
        several: Several regularisers (a composition) read the tape: it is
            persistent.
        lookups: Embedding layers whose matrix gradient may be taken as rows
            (unused: the tape's is a `tf.IndexedSlices` already).

    Yields:
        A `Recorder`.
    """
    del model, lookups
    tape = tf.GradientTape(persistent=several, watch_accessed_variables=False)
    recorder = Recorder(tape, layers, several)
    with tape, contextlib.ExitStack() as stack:
        for variable in variables:
            tape.watch(raw_variable(variable))
        if inputs and step_args:
            x, _, _ = keras.utils.unpack_x_y_sample_weight(step_args[-1])
            recorder.inputs = [
                t for t in tf.nest.flatten(x) if tf.as_dtype(t.dtype).is_floating
            ]
            for tensor in recorder.inputs:
                tape.watch(tensor)
        for layer in layers:
            stack.enter_context(transformed_output(layer, recorder.capture(layer)))
        yield recorder


def raw_variable(variable):
    """Returns the `tf.Variable` behind a Keras 3 variable."""
    value = getattr(variable, "value", variable)
    return value if isinstance(value, tf.Variable) else variable


def sum_repeated_rows(gradient):
    """Sums the rows of a `tf.IndexedSlices` that share an index.

    Args:
        gradient: A `tf.IndexedSlices` with one row per occurrence.

    Returns:
        `SparseRows` with unique ``rows``.
    """
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(
        gradient.values, position, num_segments=tf.shape(rows)[0]
    )
    return SparseRows(rows, values)


# A row index past any vocabulary: the padding rows of `sum_sorted_rows`.
PAD_ROW = PAD


def sum_sorted_rows(gradient):
    """`sum_repeated_rows` with static shapes, for XLA (no ``unique``).

    Args:
        gradient: A `tf.IndexedSlices` with one row per occurrence.

    Returns:
        `SparseRows` with as many rows as occurrences: the unique rows in
        ascending order, then rows `PAD_ROW` of zeros. Repeated rows are
        summed in their order of occurrence (a stable sort), as
        `sum_repeated_rows` sums them.
    """
    indices = gradient.indices
    order = tf.argsort(indices, stable=True)
    ordered = tf.gather(indices, order)
    first = tf.concat([tf.ones([1], tf.bool), ordered[1:] != ordered[:-1]], 0)
    segment = tf.cumsum(tf.cast(first, tf.int32)) - 1
    size = tf.shape(indices)[0]
    values = tf.math.unsorted_segment_sum(
        tf.gather(gradient.values, order), segment, size
    )
    rows = tf.math.unsorted_segment_sum(
        tf.where(first, ordered, tf.zeros_like(ordered)), segment, size
    )
    used = tf.range(size) < tf.reduce_sum(tf.cast(first, tf.int32))
    return SparseRows(tf.where(used, rows, tf.cast(PAD_ROW, rows.dtype)), values)


def scale_to_norm(gradient, epsilon, static_shapes):
    """Returns ``epsilon * gradient / ||gradient||`` as `SparseRows` or a tensor.

    Where the norm is 0 or not finite (a NaN or infinite loss) the result is 0:
    a non-finite direction must not spread into the perturbed pass.

    Args:
        gradient: A `tf.Tensor` or `tf.IndexedSlices`.
        epsilon: The norm of the result.
        static_shapes: Sum repeated rows with `sum_sorted_rows` (XLA).
    """
    if isinstance(gradient, tf.IndexedSlices):
        summed = (sum_sorted_rows if static_shapes else sum_repeated_rows)(gradient)
        return SparseRows(summed.rows, _scaled(summed.values, epsilon))
    return _scaled(tf.convert_to_tensor(gradient), epsilon)


def _scaled(values, epsilon):
    # In float32: a float16 gradient of the scaled loss (mixed precision)
    # overflows when squared.
    values = tf.cast(values, tf.float32)
    norm = tf.norm(values)
    usable = tf.logical_and(tf.math.is_finite(norm), norm > 0)
    scale = tf.math.divide_no_nan(tf.cast(epsilon, values.dtype), norm)
    return tf.where(usable, values * scale, tf.zeros_like(values))


def lookup(perturbation, ids):
    """Returns the rows of the perturbation matrix at ``ids`` (zero if absent).

    Args:
        perturbation: `SparseRows` or a dense ``vocabulary x dim`` tensor.
        ids: Integer token ids of any shape.

    Returns:
        A tensor of shape ``ids.shape + [dim]``.
    """
    ids = tf.cast(
        ids,
        perturbation.rows.dtype if isinstance(perturbation, SparseRows) else tf.int32,
    )
    if not isinstance(perturbation, SparseRows):
        return tf.gather(perturbation, ids)
    order = tf.argsort(perturbation.rows)
    rows = tf.gather(perturbation.rows, order)
    values = tf.gather(perturbation.values, order)
    flat = tf.reshape(ids, [-1])
    position = tf.minimum(tf.searchsorted(rows, flat), tf.size(rows) - 1)
    found = tf.equal(tf.gather(rows, position), flat)
    picked = tf.where(found[:, None], tf.gather(values, position), 0.0)
    return tf.reshape(picked, tf.concat([tf.shape(ids), tf.shape(values)[1:]], 0))


@contextlib.contextmanager
def perturbed(variable, perturbation):
    """Adds ``perturbation`` to ``variable`` in place, then restores it exactly.

    The saved values are copied back (never ``w + d - d``, which drifts by
    rounding). Reads taken inside the block keep their perturbed values after
    the restore (TF2 variables have value semantics), so gradients computed
    later through them are the gradients at the perturbed point.

    Args:
        variable: A `tf.Variable`.
        perturbation: `SparseRows` (only those rows change) or a dense tensor.
    """
    if isinstance(perturbation, SparseRows):
        # `PAD_ROW` rows (of zeros) land on the last row: adding 0, restoring it.
        last = tf.cast(tf.shape(variable)[0] - 1, perturbation.rows.dtype)
        rows = tf.minimum(perturbation.rows, last)
        saved = tf.gather(variable, rows)
        variable.scatter_add(
            tf.IndexedSlices(tf.cast(perturbation.values, variable.dtype), rows)
        )
        try:
            yield
        finally:
            variable.scatter_update(tf.IndexedSlices(saved, rows))
    else:
        saved = tf.identity(variable)
        variable.assign_add(tf.cast(perturbation, variable.dtype))
        try:
            yield
        finally:
            variable.assign(saved)


@contextlib.contextmanager
def restored(variables):
    """Copies the values of ``variables`` back after the block (exactly)."""
    saved = [tf.identity(v) for v in variables]
    try:
        yield
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def _constant(gradient):
    """``gradient`` (a tensor, `tf.IndexedSlices` or None) without a gradient."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            tf.stop_gradient(gradient.values), gradient.indices, gradient.dense_shape
        )
    return None if gradient is None else tf.stop_gradient(gradient)


def _is_variable(value):
    """Whether ``value`` is a variable (Keras 3, tf_keras or `tf.Variable`)."""
    return isinstance(value, (tf.Variable, keras.Variable))


def _dense_constant(gradient, like):
    """``gradient`` of a tensor, dense and constant (zeros for None)."""
    if gradient is None:
        return tf.zeros_like(like)
    return tf.stop_gradient(tf.convert_to_tensor(gradient))


def _shape(tensor):
    """The shape of ``tensor``: static sizes where known, else dynamic ones."""
    dynamic = tf.shape(tensor)
    return tuple(
        dynamic[i] if size is None else size for i, size in enumerate(tensor.shape)
    )


def _dense(perturbation):
    """A `SparseRows` perturbation cannot meet a dense one: both come from one mode."""
    if isinstance(perturbation, SparseRows):
        raise TypeError("Cannot add a sparse and a dense perturbation.")
    return perturbation


class Step(base.Step):
    """`keras_reg.backend.base.Step` for Keras 3 models on TensorFlow."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # id(variable) -> d(scaled loss)/d it: the tape gives one set of
        # gradients, later calls in the step read them from here.
        self._taken = {}
        self._recorder.capturing = False

    def loss_gradients(self, variables, differentiable=False):
        missing = [v for v in variables if id(v) not in self._taken]
        if missing:
            loss = self.scale_loss(self.loss)
            taken = self._recorder.gradient(
                loss, [raw_variable(v) for v in missing]
            )
            self._taken.update((id(v), g) for v, g in zip(missing, taken))
        gradients = [self._taken[id(v)] for v in variables]
        return gradients if differentiable else [_constant(g) for g in gradients]

    def dense(self, gradient, variable=None):
        if gradient is None:
            return tf.zeros_like(raw_variable(variable))
        return tf.convert_to_tensor(gradient)

    def frobenius_norm(self, value):
        if self._xla():  # fused there; l2_loss is not an XLA kernel everywhere
            return super().frobenius_norm(value)
        return tf.sqrt(2.0 * tf.nn.l2_loss(tf.cast(value, tf.float32)))

    def rows_or_dense(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices):
            return self._summed_rows(gradient)
        return super().rows_or_dense(gradient, variable)

    def _replica_context(self):
        """The replica context of a strategy with several replicas, else None."""
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return None
        return context

    def replicas(self):
        context = self._replica_context()
        return 1 if context is None else context.num_replicas_in_sync

    def replica_index(self):
        context = self._replica_context()
        return 0 if context is None else context.replica_id_in_sync_group

    def global_sum(self, value):
        context = self._replica_context()
        if context is None:
            return value
        if isinstance(value, tf.IndexedSlices):
            # The rows of every replica, concatenated: a sum once repeated rows
            # are summed. (An all-reduce of IndexedSlices is not differentiated
            # correctly by a penalty; all_gather is.)
            return tf.IndexedSlices(
                context.all_gather(value.values, axis=0),
                context.all_gather(value.indices, axis=0),
                value.dense_shape,
            )
        # Differentiable: the gradient of an all-sum is the all-sum of the
        # replicas' upstream gradients (tf.distribute defines it so).
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value)

    def all_gather(self, value):
        context = self._replica_context()
        return value if context is None else context.all_gather(value, axis=0)

    def output_gradients(self, layer, of=None):
        outputs = self._recorder.outputs[id(layer)]
        if not outputs:
            raise ValueError(base.NO_LOOKUP.format(name=layer.name))
        if of is not None:
            return self._recorder.gradient(of(self.y_pred), outputs)
        loss = self.scale_loss(self.loss)
        gradients = self._recorder.gradient(loss, outputs)
        return [self.unscaled(g) for g in gradients]

    def input_gradients(self, of):
        return self._recorder.gradient(of(self.y_pred), self._recorder.inputs)

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
        x = self.x if x is None else x
        with contextlib.ExitStack() as stack:
            if frozen:
                stack.enter_context(restored([raw_variable(v) for v in frozen]))
            for variable, delta in added:
                delta = tf.nest.map_structure(tf.stop_gradient, delta)
                stack.enter_context(perturbed(raw_variable(variable), delta))
            if layer is not None:
                stack.enter_context(transformed_output(layer, transform))
            y_pred = self.model(x, training=True)
            loss = self._perturbed_loss(y_pred, x)
        return (y_pred, loss) if with_output else loss

    def squared_norm(self, gradient):
        if gradient is None:
            return tf.constant(0.0)
        if isinstance(gradient, tf.IndexedSlices):
            values = self._summed_rows(gradient).values
        else:
            values = gradient
        return tf.reduce_sum(tf.square(tf.cast(values, tf.float32)))

    def unscaled(self, gradient):
        if gradient is None:
            return None
        factor = self.scale_loss(tf.constant(1.0))
        if isinstance(gradient, tf.IndexedSlices):
            values = gradient.values / tf.cast(factor, gradient.values.dtype)
            return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
        return gradient / tf.cast(factor, gradient.dtype)

    def value_and_gradient(self, function, wrt):
        single = not isinstance(wrt, (list, tuple))
        leaves = [wrt] if single else list(wrt)
        variables = [_is_variable(leaf) for leaf in leaves]
        sources = [
            raw_variable(leaf) if is_variable else tf.stop_gradient(leaf)
            for leaf, is_variable in zip(leaves, variables)
        ]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for source in sources:
                tape.watch(source)
            given = [
                leaf if is_variable else source
                for leaf, source, is_variable in zip(leaves, sources, variables)
            ]
            objective, value = function(given[0] if single else given)
        gradients = tape.gradient(objective, sources)
        gradients = [
            _constant(g) if is_variable else _dense_constant(g, source)
            for g, source, is_variable in zip(gradients, sources, variables)
        ]
        return value, gradients[0] if single else gradients

    def scale_loss(self, loss):
        optimizer = self.model.optimizer
        return optimizer.scale_loss(loss) if optimizer is not None else loss

    def scale_to_norm(self, gradient, epsilon):
        return scale_to_norm(gradient, epsilon, static_shapes=self._xla())

    def _summed_rows(self, gradient):
        """`SparseRows` of a `tf.IndexedSlices`, repeated rows summed."""
        if self._xla():
            return sum_sorted_rows(gradient)
        return sum_repeated_rows(gradient)

    def _rows(self, perturbation, ids):
        return lookup(perturbation, ids)

    def _inner_product(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices):
            rows = tf.gather(raw_variable(variable), gradient.indices)
            values = tf.stop_gradient(tf.cast(gradient.values, tf.float32))
            return tf.reduce_sum(values * tf.cast(rows, tf.float32))
        value = tf.cast(raw_variable(variable), tf.float32)
        return tf.reduce_sum(tf.stop_gradient(tf.cast(gradient, tf.float32)) * value)

    def add_perturbations(self, first, second):
        if isinstance(first, SparseRows) and isinstance(second, SparseRows):
            union = tf.IndexedSlices(
                tf.concat([first.values, second.values], 0),
                tf.concat([first.rows, second.rows], 0),
            )
            return self._summed_rows(union)
        return _dense(first) + _dense(second)

    def lookup_shapes(self, layer):
        outputs = self._recorder.outputs[id(layer)]
        if not outputs:
            raise ValueError(base.NO_LOOKUP.format(name=layer.name))
        return [_shape(output) for output in outputs]

    def lookup_outputs(self, layer):
        self.lookup_shapes(layer)  # a clear error without a lookup
        return [tf.stop_gradient(o) for o in self._recorder.outputs[id(layer)]]

    def _plain_lookup(self, layer, variable):
        """Whether perturbing the layer's output is perturbing E in every use.

        True when the layer's output is ``E[ids]`` and nothing else reads E:
        then the clean gradient is a `tf.IndexedSlices`. A tied output head or
        an ``embeddings_regularizer`` also reads E, which makes the gradient
        dense; those take the in-place path.
        """
        return type(layer).call is self._embedding_class().call and isinstance(
            self.loss_gradient(variable), tf.IndexedSlices
        )

    def _embedding_class(self):
        return keras.layers.Embedding

    def _xla(self):
        return bool(getattr(self.model, "jit_compile", False))

    def normal(self, shape, seed):
        """`base.Step.normal`; under XLA with the Philox algorithm named.

        ``keras.random.normal`` leaves TensorFlow's algorithm at
        ``auto_select``, which is Philox in graph mode but under XLA on a CPU
        took ~95 ms for 32 x 64 x 128 numbers against 7 ms for Philox
        (TF 2.21): a whole plain step of VAT's time under ``jit_compile``.
        Graph mode keeps Keras's draw (the same numbers as Philox).
        """
        if not self._xla():
            return super().normal(shape, seed)
        return tf.random.stateless_normal(
            shape, seed=keras_internals.tf_stateless_seed(seed), alg="philox"
        )

    def uniform(self, shape, seed, minval=0.0, maxval=1.0):
        """`base.Step.uniform`; under XLA with the Philox algorithm (see `normal`)."""
        if not self._xla():
            return super().uniform(shape, seed, minval, maxval)
        return tf.random.stateless_uniform(
            shape,
            seed=keras_internals.tf_stateless_seed(seed),
            minval=minval,
            maxval=maxval,
            alg="philox",
        )

    def _perturbed_loss(self, y_pred, x):
        with quiet_loss_metrics(self.model):
            return self._compute_loss(
                x, self.y, y_pred, self.sample_weight, training=True
            )
