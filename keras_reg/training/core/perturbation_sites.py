"""Where VAT's perturbation acts: the inputs, an embedding's output or its rows.

A site runs the model on unlabelled inputs ``x`` with a perturbation ``delta``
added somewhere (``predict(x, None)`` is the clean pass, and must come first:
it records what the later passes perturb, and keeps it as ``clean``, the
tensors a relative radius is measured against), and tells VAT the shape of
the random start direction (``shape``) and which of its entries are real
(``restrict``).

An embedding layer may be called several times in one forward pass (a shared
embedding in a two-input, siamese model): the output site perturbs each call's
output on its own; the matrix site gives a token the same row in every call.
"""

from keras_reg._compat import keras
from keras_reg.training.core.embedding import embedding_layer_names, embedding_matrix

ops = keras.ops


def site_for(step, layer, perturb):
    """Returns the perturbation site of one VAT step.

    Args:
        step: The `keras_reg.backend.base.Step` in progress.
        layer: The embedding layer, or None to perturb the model's inputs.
        perturb: ``"matrix"`` or ``"output"`` (ignored without a layer).
    """
    if layer is None:
        return InputSite(step)
    if perturb == "output":
        return OutputSite(step, layer)
    return MatrixSite(step, layer)


def is_integer_dtype(dtype):
    """Whether ``dtype`` (any framework's, or a string) is an integer or bool."""
    name = keras.backend.standardize_dtype(dtype)
    return name.startswith(("int", "uint", "bool"))


def input_error(model, received):
    """Returns the ValueError for VAT on inputs that cannot be perturbed."""
    names = ", ".join(repr(n) for n in embedding_layer_names(model)) or "none"
    return ValueError(
        "VAT with embedding_name=None adds its perturbation to the model's "
        f"input, which must be one floating-point tensor; received {received}. "
        "For token ids, perturb the embedding instead: pass "
        f"embedding_name=<its layer name> (layers with an embedding matrix: "
        f"{names}). For numeric features, pass them as floats "
        "(x.astype('float32'))."
    )


class InputSite:
    """Perturbs the model's (single, float) input."""

    # The perturbation has one row per example of this replica's shard.
    per_example = True

    def __init__(self, step):
        self.step = step
        self.clean = []

    def shape(self, x):
        return ops.shape(x)

    def restrict(self, d):
        return d

    def predict(self, x, delta):
        leaves = keras.tree.flatten(x)
        if len(leaves) != 1:
            raise input_error(self.step.model, f"{len(leaves)} inputs")
        if is_integer_dtype(leaves[0].dtype):
            dtype = keras.backend.standardize_dtype(leaves[0].dtype)
            raise input_error(self.step.model, f"inputs of dtype {dtype}")
        if delta is None:
            self.clean = leaves
        return self.step.forward(x if delta is None else x + delta)


class OutputSite:
    """Perturbs the embedding layer's output (the embedded sequence).

    With one call of the layer per pass, the perturbation is shaped like the
    layer's output. With several (a shared embedding), each call's part is
    flattened per example and the parts are concatenated: ``batch x total``,
    so ``norm="example"`` takes one norm per example over all its calls.
    """

    per_example = True

    def __init__(self, step, layer):
        self.step = step
        self.layer = layer
        self.calls = []  # the token ids of each call in the clean pass
        self.clean = []  # the output of each call in the clean pass

    def dim(self):
        return embedding_matrix(self.layer).shape[1]

    def shape(self, x):
        if len(self.calls) == 1:
            return (*ops.shape(self.calls[0]), self.dim())
        return (ops.shape(self.calls[0])[0], sum(self._widths()))

    def restrict(self, d):
        return d

    def predict(self, x, delta):
        if delta is None:
            self.calls, self.clean = [], []
        count = [0]

        def transform(output, ids):
            if len(output.shape) != len(ids.shape) + 1:
                return output  # not a lookup: bert4keras's Embedding as output head
            index = count[0]
            count[0] += 1
            if delta is None:
                self.calls.append(ids)
                self.clean.append(ops.stop_gradient(output))
                return output
            if index >= len(self.calls):
                raise ValueError(
                    f"The embedding layer {self.layer.name!r} was called more "
                    "often in a perturbed forward pass than in the clean one; "
                    "VAT needs the same calls in every pass."
                )
            return output + ops.cast(self.lookup(delta, index), output.dtype)

        return self.step.forward(x, layer=self.layer, transform=transform)

    def _widths(self):
        """Returns each call's number of entries per example (positions x dim)."""
        widths = []
        for ids in self.calls:
            width = self.dim()
            for size in ops.shape(ids)[1:]:
                width = width * size
            widths.append(width)
        return widths

    def lookup(self, delta, index):
        """Returns the perturbation of call ``index``'s output."""
        if len(self.calls) == 1:
            return delta
        start = sum(self._widths()[:index])
        part = delta[:, start : start + self._widths()[index]]
        return ops.reshape(part, (*ops.shape(self.calls[index]), self.dim()))


class MatrixSite(OutputSite):
    """Perturbs the rows of the embedding matrix used by the unlabelled batch.

    Without a ``vocabulary x dim`` tensor: the N token occurrences of the batch
    (over every call of the layer) are grouped by id (sort + cumsum, static
    shapes, so XLA compiles it), and the perturbation holds one row per
    distinct id in slots ``0 .. distinct - 1`` of an ``N x dim`` tensor (the
    other slots stay zero). Slot k is the k-th smallest id of the batch, in
    every call. Under several replicas the ids of the global batch are
    gathered first, so every replica holds the same slots (the global
    batch's), as one device would.
    """

    per_example = False

    def __init__(self, step, layer):
        super().__init__(step, layer)
        self._grouped = None

    def shape(self, x):
        return (ops.size(self._all_ids()), self.dim())

    def restrict(self, d):
        _, distinct = self._groups()
        used = ops.arange(ops.shape(d)[0]) < distinct
        return d * ops.cast(used, d.dtype)[:, None]

    def predict(self, x, delta):
        if delta is None:
            self._grouped = None
        return super().predict(x, delta)

    def rows_norm(self):
        """The Frobenius norm of the rows of the global batch's tokens, each once."""
        ids = ops.sort(ops.reshape(ops.cast(self._all_ids(), "int32"), (-1,)))
        first = ops.concatenate([ops.ones((1,), "bool"), ids[1:] != ids[:-1]])
        matrix = ops.convert_to_tensor(embedding_matrix(self.layer))
        rows = ops.cast(ops.take(matrix, ids, axis=0), "float32")
        squares = ops.sum(ops.square(rows), axis=-1)
        return ops.sqrt(ops.sum(ops.where(first, squares, ops.zeros_like(squares))))

    def lookup(self, delta, index):
        slot, _ = self._groups()
        slot = self._local_block(slot)
        ids = self.calls[index]
        if len(self.calls) > 1:
            start = sum(ops.size(c) for c in self.calls[:index])
            slot = slot[start : start + ops.size(ids)]
        rows = ops.take(delta, slot, axis=0)
        return ops.reshape(rows, (*ops.shape(ids), ops.shape(delta)[-1]))

    def _local_ids(self):
        flat = [ops.reshape(ops.cast(ids, "int32"), (-1,)) for ids in self.calls]
        return flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=0)

    def _all_ids(self):
        """The ids of the global batch: every replica's, in replica order."""
        return self.step.all_gather(self._local_ids())

    def _local_block(self, values):
        """This replica's part of a tensor over `_all_ids` (same-size shards)."""
        if self.step.replicas() == 1:
            return values
        size = ops.size(self._local_ids())
        start = self.step.replica_index() * size
        return ops.slice(values, [start], [size])

    def _groups(self):
        if self._grouped is None:
            self._grouped = group_by_id(self._all_ids())
        return self._grouped


def group_by_id(ids):
    """Returns (slot of each occurrence, number of distinct ids), slots by id order."""
    flat = ops.reshape(ops.cast(ids, "int32"), (-1,))
    order = ops.argsort(flat)
    ordered = ops.take(flat, order)
    starts = ops.cast(ordered[1:] != ordered[:-1], "int32")
    slots_in_order = ops.cumsum(ops.concatenate([ops.zeros((1,), "int32"), starts]))
    slot = ops.take(slots_in_order, ops.argsort(order))
    return slot, slots_in_order[-1] + 1
