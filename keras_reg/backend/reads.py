"""Counting, at trace time, who reads a Keras 3 variable during one forward pass.

Reads of a Keras 3 variable -- ``ops.take(layer.embeddings, ids)``, a tied
output head's ``ops.matmul(h, ops.transpose(embedding.embeddings))`` -- go
through the variable's ``value`` property (TensorFlow's ``__tf_tensor__``,
JAX's ``__jax_array__`` and the torch backend's conversions all call it),
which inside a `keras.StatelessScope` asks the scope's ``get_current_value``;
Keras's weight regularisers ask the scope directly. While a `recorded_reads`
block runs, both are shadowed on their classes by versions that count the reads
of one variable (in a scope: at ``get_current_value``; outside: at ``value``),
split by whether a given layer's ``call`` is running.

The backends use the counts to decide, when a pass is traced (once per
compiled function on TensorFlow and JAX), whether adding a perturbation to an
embedding layer's *output* is the same as perturbing its matrix (no other
reader), and whether the loss reads the matrix at all.
"""

import contextlib

from keras_reg._compat import keras
from keras_reg.backend import keras_internals


class ReadCounts:
    """Reads of one variable inside and outside one layer's ``call``."""

    def __init__(self):
        self.inside = 0
        self.outside = 0
        self._depth = 0

    @property
    def total(self):
        """All reads seen in the block."""
        return self.inside + self.outside


def _value_owner(cls):
    """Returns the class in ``cls``'s MRO that defines the ``value`` property."""
    for klass in cls.__mro__:
        if "value" in vars(klass):
            return klass
    raise TypeError(f"{cls.__name__} has no `value` property: not a Keras 3 variable.")


@contextlib.contextmanager
def recorded_reads(variable, layer=None, counts=None):
    """Counts the reads of ``variable`` made inside the block.

    The class-level property is restored on exit, also when the block raises.
    Only Python-level reads are seen, so use it around the code that traces a
    pass (graph mode, ``jit``) or runs it eagerly.

    Args:
        variable: A Keras 3 variable.
        layer: Optional layer: reads made while its ``call`` runs count as
            ``inside``, all others as ``outside``.
        counts: A `ReadCounts` to fill in (default: a new one), for callers
            that hand the context to code that enters it later.

    Yields:
        A `ReadCounts`, filled in as the block runs.

    Example:
        >>> with recorded_reads(embedding.embeddings, embedding) as reads:
        ...     model(x)
        >>> reads.outside   # 0 unless another layer reads the matrix
    """
    counts = ReadCounts() if counts is None else counts
    cls = type(variable)
    owner = _value_owner(cls)
    plain = vars(owner)["value"]
    scope_class = keras.StatelessScope
    plain_lookup = scope_class.get_current_value

    def count():
        if counts._depth:
            counts.inside += 1
        else:
            counts.outside += 1

    def value(self):
        if self is variable and not keras.backend.is_keras_tensor(self) and (
            not keras_internals.in_stateless_scope()
        ):
            count()
        return plain.__get__(self, type(self))

    def get_current_value(scope, asked):
        if asked is variable:
            count()
        return plain_lookup(scope, asked)

    own_call = layer.__dict__.get("call") if layer is not None else None
    if layer is not None:
        layer_call = layer.call

        def call(*args, **kwargs):
            counts._depth += 1
            try:
                return layer_call(*args, **kwargs)
            finally:
                counts._depth -= 1

        layer.call = call
    cls.value = property(value)
    scope_class.get_current_value = get_current_value
    try:
        yield counts
    finally:
        scope_class.get_current_value = plain_lookup
        if cls is owner:
            cls.value = plain
        else:
            del cls.value
        if layer is not None:
            if own_call is None:
                del layer.call
            else:
                layer.call = own_call

