"""FreeVAT: VAT whose direction is carried from the previous step's VAT pass.

References:
    Miyato, Maeda, Koyama, Ishii. Virtual Adversarial Training: A Regularization
    Method for Supervised and Semi-Supervised Learning. TPAMI 2018.
    https://arxiv.org/abs/1704.03976

    Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor, Goldstein.
    Adversarial Training for Free! NeurIPS 2019. https://arxiv.org/abs/1904.12843
"""

from keras_reg._compat import keras
from keras_reg.training.adversarial.vat import VAT, normalize
from keras_reg.training.core import schedule
from keras_reg.training.core.divergence import kl_divergence
from keras_reg.training.core.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.core.export import export
from keras_reg.training.core.perturbation_sites import is_integer_dtype

ops = keras.ops

_TABLE = "free_vat_examples"  # inputs: one direction per unlabelled example
_IDS = "free_vat_ids"  # embedding: the last batch's distinct token ids, sorted
_ROWS = "free_vat_rows"  # embedding: their direction rows
# Marks an empty slot of the carried ids (float32 holds every id below it).
NO_ID = float(2**24)


@export("free_virtual_adversarial_training")
class FreeVAT(VAT):
    """VAT without its power-iteration pass: the direction comes from the last step.

    VAT's power iteration runs one extra forward and backward pass to find
    ``d = grad_r KL(p || model at r)`` at a probe ``r``. FreeVAT takes that
    gradient from the VAT pass it runs anyway: with ``g`` the gradient of
    the VAT loss with respect to the perturbation (taken in the same backward
    pass as the weights' gradients), the step is

        d = +- the carried direction of this unlabelled batch, the sign
            drawn at random (per example, or once for matrix rows); a
            fresh d ~ N(0, I) where nothing is carried, as in VAT
        r = epsilon * d / ||d||
        loss = supervised + weight * KL(p || model at r)
        carried <- g = d KL(p || model at r) / d r     (for the next steps)

    i.e. one power iteration with ``xi = epsilon``, spread over two steps.
    The random sign keeps what VAT's random start gives: the direction is
    an eigenvector, defined up to its sign, and KL is larger on one side of
    an example than the other. Carried with its sign, the direction stays
    on one side (two moons, 8 labels, 3 seeds: 0.83 test accuracy, the
    baseline's, against 0.99 with the random sign).
    A step costs the supervised step, one inference pass for p and one
    forward + backward pass (VAT: two of those).

    A per-example direction cannot be carried to another batch, so the
    direction is kept where a later batch can find it:

    - on the inputs (``embedding_name=None``): one direction per example of
      the ``unlabeled`` arrays (a ``pool x features`` float32 state, the size
      of the unlabelled inputs themselves: a per-example direction has to be
      kept per example). An example's direction is refreshed each time it is
      drawn; one never drawn (all zero) starts from N(0, I).
    - on an embedding (``perturb="matrix"``): one row per token id, for the
      distinct ids of the last unlabelled batch only (ids and rows: a state
      of ``unlabeled_batch_size x tokens per example`` rows, never a
      ``vocabulary x dim`` one). This step's tokens that the last batch
      also had get their carried row, the others a zero row; a batch that
      shares no token with the last (or the first step) starts from N(0, I).

    ``perturb="output"`` is not offered (its direction is per position of
    one example). Everything else is VAT's (see `VAT`): the passes, the KL,
    ``norm``, ``entropy_weight``, ``predictions``. The state is not one of
    the model's weights (see `keras_reg.backend.base.Step.state`).

    Args:
        embedding_name: The embedding layer to perturb, or None for the inputs.
        epsilon: Norm of the adversarial perturbation r, or a schedule.
        unlabeled: Unlabelled input arrays (required at install: the carried
            directions are indexed by their examples or tokens; never
            serialised, pass them again after `from_config`).
        unlabeled_batch_size: Unlabelled examples per step; required with an
            embedding (it sizes the carried rows), None for inputs: as many as
            the labelled batch.
        weight: Factor of the VAT loss, or a schedule.
        perturb: ``"matrix"`` (with an embedding).
        norm: ``"batch"`` or ``"example"``; None: ``"example"`` for inputs,
            ``"batch"`` for an embedding.
        seed: Seed of the unlabelled draws and of the initial directions.
        entropy_weight: Factor of the conditional entropy of p (VAT+EntMin).
        predictions: ``"probabilities"``, ``"logits"`` or None (inferred).

    Example:
        >>> keras_reg.free_virtual_adversarial_training(
        ...     model, epsilon=0.3, unlabeled=x_unlabeled)
        >>> model.fit(x_labeled, y_labeled, epochs=10)
    """

    def __init__(
        self,
        embedding_name=None,
        epsilon=1.0,
        unlabeled=None,
        unlabeled_batch_size=None,
        weight=1.0,
        perturb="matrix",
        norm=None,
        seed=None,
        entropy_weight=0.0,
        predictions=None,
    ):
        super().__init__(
            embedding_name,
            epsilon=epsilon,
            unlabeled=unlabeled,
            unlabeled_batch_size=unlabeled_batch_size,
            weight=weight,
            perturb=perturb,
            norm=norm,
            seed=seed,
            entropy_weight=entropy_weight,
            predictions=predictions,
        )
        if embedding_name is not None and self.perturb == "output":
            raise ValueError(
                "FreeVAT carries its direction per token id, so it perturbs the "
                "embedding matrix's rows; received perturb='output' (one vector "
                "per position, which no later batch shares). Use "
                "perturb='matrix', or VAT for perturb='output'."
            )

    def validate(self, model):
        super().validate(model)
        if self.sampler.arrays is None or (
            self.embedding_name is not None and self.unlabeled_batch_size is None
        ):
            need = "`unlabeled` arrays" + (
                "" if self.embedding_name is None else " and `unlabeled_batch_size`"
            )
            given = "arrays" if self.sampler.arrays is not None else "none"
            raise ValueError(
                f"FreeVAT carries each direction to the next step that draws "
                f"the same example or token, so it needs {need} (they size the "
                f"carried state); received unlabeled={given}, "
                f"unlabeled_batch_size={self.unlabeled_batch_size!r}. Pass e.g. "
                "unlabeled=x_unlabeled, unlabeled_batch_size=64 (after "
                "`from_config`, pass the data again), or use VAT."
            )

    def carried_state(self, model):
        # VAT's record of outputs that were not probabilities, and the carry.
        state = super().carried_state(model)
        arrays = keras.tree.flatten(self.sampler.arrays)
        if self.embedding_name is None:
            return {**state, _TABLE: tuple(arrays[0].shape)}
        layer = find_embedding_layer(model, self.embedding_name)
        dim = int(embedding_matrix(layer).shape[1])
        ids = [a for a in arrays if is_integer_dtype(a.dtype)] or arrays
        tokens = sum(int(a[0].size) for a in ids)
        capacity = self.unlabeled_batch_size * tokens
        return {**state, _IDS: (capacity,), _ROWS: (capacity, dim)}

    def terms(self, step):
        clean = self.clean_pass(step)
        kind, x, site, p, seed = clean.kind, clean.x, clean.site, clean.p, clean.seed
        index = clean.index

        def draw(shape):
            return step.normal(shape, seed)

        if self.embedding_name is None:
            carried = ops.take(step.state(_TABLE), index, axis=0)
            fresh = step.draw_per_example(draw, ops.shape(carried))
            flip = step.draw_per_example(
                lambda shape: step.uniform(shape, seed),
                _is_zero(carried, per_example=True).shape,
            )
            carried = ops.where(flip < 0.5, carried, -carried)
            d = ops.where(_is_zero(carried, per_example=True), fresh, carried)
        else:
            slot_ids = _slot_ids(site)
            carried = _carried_rows(step, slot_ids)
            flip = step.uniform((), seed)
            carried = ops.where(flip < 0.5, carried, -carried)
            fresh = site.restrict(draw(ops.shape(carried)))
            d = ops.where(_is_zero(carried, per_example=False), fresh, carried)
        local = step if site.per_example else None
        epsilon = schedule.current(step, self.epsilon)
        r = ops.stop_gradient(normalize(d, self.norm, local) * epsilon)
        variables = list(step.model.trainable_variables)

        def objective(wrt):
            loss = kl_divergence(p, site.predict(x, wrt[-1]), kind)
            return step.scale_loss(loss), loss

        # One pass at r, differentiated once: the weights' gradients train
        # them (through `linear_loss`), the perturbation's is the direction.
        loss, gradients = step.value_and_gradient(objective, variables + [r])
        gradients = [_unscaled(step, g) for g in gradients]
        direction = gradients[-1]
        if self.embedding_name is None:
            _store_examples(step, index, direction)
        else:
            _store_rows(step, slot_ids, step.global_sum(direction))
        vat_loss = step.global_mean(ops.stop_gradient(loss))
        term = step.linear_loss(vat_loss, variables, gradients[:-1])
        return term, vat_loss, clean.entropy_term

    def regularized_loss(self, step):
        term, vat_loss, entropy_term = self.terms(step)
        step.log("vat_loss", vat_loss)
        weight = schedule.current(step, self.weight)
        return step.loss_plus(term * weight + entropy_term)

    def get_config(self):
        config = super().get_config()
        del config["xi"], config["iters"]
        return config

    @classmethod
    def from_config(cls, config):
        """As `VAT.from_config`; ``unlabeled_batch_size`` is kept without the data.

        It sizes the carried rows once the data is passed again.
        """
        size = config.get("unlabeled_batch_size")
        restored = super().from_config(config)
        if restored.sampler.arrays is None:
            restored.unlabeled_batch_size = size
        return restored


def _unscaled(step, gradient):
    """`Step.unscaled`, keeping a sparse (row) gradient sparse."""
    if not hasattr(gradient, "dense_shape"):  # not a tf.IndexedSlices
        return step.unscaled(gradient)
    factor = ops.cast(step.scale_loss(ops.ones((), "float32")), gradient.values.dtype)
    return type(gradient)(
        gradient.values / factor, gradient.indices, gradient.dense_shape
    )


def _is_zero(direction, per_example):
    """True where a carried direction is all zero: per example, or for all of it."""
    if not per_example:
        return ops.all(direction == 0)
    axes = tuple(range(1, len(direction.shape)))
    return ops.all(direction == 0, axis=axes, keepdims=True)


def _finite(direction):
    """``direction``, or zeros if any entry is not finite (nothing is carried)."""
    usable = ops.isfinite(ops.sum(ops.square(direction)))
    return ops.where(usable, direction, ops.zeros_like(direction))


def _store_examples(step, index, direction):
    """Writes each drawn example's new direction (every replica's) to the table."""
    table = step.state(_TABLE)
    values = ops.convert_to_tensor(table)
    index = step.all_gather(ops.cast(index, "int32"))
    direction = _finite(step.all_gather(ops.cast(direction, "float32")))
    table.assign(ops.scatter_update(values, ops.expand_dims(index, -1), direction))


def _slot_ids(site):
    """The token id of each slot of a matrix site's perturbation (`NO_ID` if empty)."""
    slot, distinct = site._groups()
    ids = ops.cast(site._all_ids(), "float32")
    size = ops.shape(ids)[0]
    slot_ids = ops.segment_max(ids, slot, num_segments=size)
    return ops.where(ops.arange(size) < distinct, slot_ids, NO_ID)


def _carried_rows(step, slot_ids):
    """Each slot's carried row (zero where the last batch lacked its token)."""
    ids, rows = step.state(_IDS), step.state(_ROWS)
    # Tensors, not variables (Keras 3.12's searchsorted takes no tf.Variable).
    ids = ops.stop_gradient(ops.convert_to_tensor(ids))
    rows = ops.stop_gradient(ops.convert_to_tensor(rows))
    position = ops.minimum(ops.searchsorted(ids, slot_ids), ops.shape(ids)[0] - 1)
    found = ops.logical_and(ops.take(ids, position) == slot_ids, slot_ids < NO_ID)
    carried = ops.take(rows, position, axis=0)
    return ops.where(found[:, None], carried, ops.zeros_like(carried))


def _fitted(values, size, fill):
    """``values`` cut or padded (with ``fill``) to ``size`` rows."""
    padding = ops.full((size, *values.shape[1:]), fill, values.dtype)
    return ops.concatenate([values, padding], axis=0)[:size]


def _store_rows(step, slot_ids, direction):
    """Keeps this batch's distinct ids (sorted) and their new rows."""
    ids, rows = step.state(_IDS), step.state(_ROWS)
    capacity = ids.shape[0]
    direction = _finite(ops.cast(direction, "float32"))
    ids.assign(_fitted(slot_ids, capacity, NO_ID))
    rows.assign(_fitted(direction, capacity, 0.0))
