"""Virtual adversarial training (VAT): semi-supervised, one model, one ``fit``.

References:
    Miyato, Maeda, Koyama, Ishii. Virtual Adversarial Training: A Regularization
    Method for Supervised and Semi-Supervised Learning. TPAMI 2018.
    https://arxiv.org/abs/1704.03976

    Miyato, Dai, Goodfellow. Adversarial Training Methods for Semi-Supervised
    Text Classification. ICLR 2017. https://arxiv.org/abs/1605.07725

    Su Jianlin. 泛化性乱弹：从随机噪声、梯度惩罚到虚拟对抗训练 (On generalisation:
    from random noise and gradient penalty to VAT). https://kexue.fm/archives/7466
"""

from keras_reg import backend
from keras_reg._compat import keras
from keras_reg.training import step as step_module
from keras_reg.training.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.regularizer import TrainingRegularizer, register
from keras_reg.training.unlabeled import UnlabeledSampler
from keras_reg.validation import (
    check_options,
    choice,
    non_negative_number,
    positive_number,
)

ops = keras.ops

PERTURB = ("matrix", "output")
NORM = ("batch", "example")


def kl_divergence(p, q, axis=-1):
    """Returns the batch mean of KL(p || q) for probability outputs.

    A last axis of size 1 is read as Bernoulli probabilities (a sigmoid output).
    """
    tiny = 1e-7
    if p.shape[axis] == 1:
        p = ops.concatenate([1.0 - p, p], axis=axis)
        q = ops.concatenate([1.0 - q, q], axis=axis)
    p = ops.clip(p, tiny, 1.0)
    q = ops.clip(q, tiny, 1.0)
    return ops.mean(ops.sum(p * (ops.log(p) - ops.log(q)), axis=axis))


def entropy(p, axis=-1):
    """Returns the batch mean of the entropy of probability outputs ``p``."""
    if p.shape[axis] == 1:
        p = ops.concatenate([1.0 - p, p], axis=axis)
    return -ops.mean(ops.sum(p * ops.log(ops.clip(p, 1e-7, 1.0)), axis=axis))


def normalize(d, norm):
    """Returns ``d`` scaled to unit L2 norm over the whole tensor or per example."""
    if norm == "batch":
        return d / ops.maximum(ops.sqrt(ops.sum(ops.square(d))), 1e-12)
    axes = tuple(range(1, len(d.shape)))
    length = ops.sqrt(ops.sum(ops.square(d), axis=axes, keepdims=True))
    return d / ops.maximum(length, 1e-12)


@register
class VAT(TrainingRegularizer):
    """Virtual adversarial training (Miyato et al. 2018), the source's version.

    For an unlabelled batch x: p = model(x), held constant; d ~ N(0, I); repeat
    ``iters`` times: d = xi * d / ||d||, d = grad_d KL(p || model at d); then
    r = epsilon * d / ||d|| and the VAT loss is KL(p || model at r). The step
    optimizes the supervised loss + ``weight`` x the VAT loss (+
    ``entropy_weight`` x the entropy of p, where p keeps its gradient).

    Where the perturbation acts:

    - ``embedding_name=None``: added to the model's (float) inputs;
    - ``perturb="matrix"`` (the source): added to the rows of the embedding
      matrix that the unlabelled batch uses (one vector per token);
    - ``perturb="output"``: added to the embedding layer's output, i.e. the
      embedded sequence (one vector per position): in a probe this was much
      more stable for models trained from scratch.

    ``norm="batch"`` normalises over the whole perturbation (the source);
    ``norm="example"`` per example (the paper; not defined for ``"matrix"``).
    The default follows each: ``"example"`` for inputs, ``"batch"`` for an
    embedding. With ``"batch"`` the per-example size of r is about
    ``epsilon / sqrt(batch)``, so it changes with the unlabelled batch size.

    Dropout: the supervised pass is the ordinary training pass; the VAT passes
    (p, the power iteration and the final KL) run with ``training=False``, so
    dropout is off and BatchNormalization uses its moving statistics.

    Args:
        embedding_name: The embedding layer to perturb, or None for the inputs.
        epsilon: Norm of the adversarial perturbation r.
        xi: Norm of the probe perturbation in the power iteration (the source
            uses 10 on BERT embeddings; the paper 1e-6 on images).
        iters: Power iterations (1 in the paper and the source).
        unlabeled: Unlabelled inputs: an array (or a list/dict of arrays, like
            the model's inputs), or a ``tf.data.Dataset`` of batches on
            TensorFlow. None: the VAT loss uses the ``fit`` batch's inputs (the
            source's set-up, with a model compiled without a loss).
        unlabeled_batch_size: Unlabelled examples per step (arrays only);
            None: as many as the labelled batch.
        weight: Factor of the VAT loss in the total loss.
        perturb: ``"matrix"`` or ``"output"``, see above.
        norm: ``"batch"``, ``"example"``, or None (the default: ``"example"``
            for inputs as in the paper, ``"batch"`` for an embedding as in the
            source).
        seed: Seed of the unlabelled draws and of d's initial directions.
        entropy_weight: Factor of the conditional entropy of p on the unlabelled
            batch, added to the loss (the paper's "VAT+EntMin").
            0 (the default, as in the source) turns it off. With a flexible
            model and few labels it can also drive every unlabelled prediction
            to one class (measured: notes/issue3_sentiment.md).

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.virtual_adversarial_training(
        ...     model, "Embedding-Token", epsilon=1.0, xi=10.0, unlabeled=x_u)
        >>> model.fit(x_labeled, y_labeled, epochs=10)
    """

    def __init__(
        self,
        embedding_name=None,
        epsilon=1.0,
        xi=10.0,
        iters=1,
        unlabeled=None,
        unlabeled_batch_size=None,
        weight=1.0,
        perturb="matrix",
        norm=None,
        seed=None,
        entropy_weight=0.0,
    ):
        if norm is None:
            norm = "example" if embedding_name is None else "batch"
        self.embedding_name = embedding_name
        self.epsilon = positive_number("epsilon", epsilon, example=1.0)
        self.xi = positive_number("xi", xi, example=10.0)
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(
                f"`iters` must be an integer >= 1, received iters={iters!r}. "
                "Pass e.g. iters=1 (the paper's and the source's choice)."
            )
        self.iters = iters
        self.weight = positive_number("weight", weight, example=1.0)
        self.perturb = choice("perturb", perturb, PERTURB)
        self.norm = choice("norm", norm, NORM)
        if embedding_name is not None and perturb == "matrix" and norm == "example":
            raise ValueError(
                "norm='example' is not defined for perturb='matrix' (matrix rows "
                "are shared by the examples). Use norm='batch', or "
                "perturb='output' to perturb each example's embedded sequence."
            )
        self.entropy_weight = non_negative_number(
            "entropy_weight", entropy_weight, example=1.0
        )
        self.unlabeled_batch_size = unlabeled_batch_size
        self.seed = seed
        self.sampler = UnlabeledSampler(unlabeled, unlabeled_batch_size, seed)
        self.noise_seed = keras.random.SeedGenerator(seed)

    def validate(self, model):
        if self.embedding_name is not None:
            find_embedding_layer(model, self.embedding_name)
        if self.sampler.iterator is not None and backend.framework(model) not in (
            "tensorflow",
            "tf_keras",
        ):
            raise ValueError(
                "A tf.data.Dataset of unlabelled batches can only be read inside "
                f"a TensorFlow train step; this model trains on "
                f"{backend.framework(model)!r}. Pass `unlabeled` as arrays (VAT "
                "draws a batch from them at every step)."
            )
        if self.sampler.iterator is not None and getattr(model, "jit_compile", False):
            raise ValueError(
                "A tf.data.Dataset of unlabelled batches cannot be read inside an "
                "XLA-compiled step (the model was compiled with jit_compile=True). "
                "Pass `unlabeled` as arrays, or compile with jit_compile=False."
            )

    def regularized_loss(self, step):
        x = self.sampler.draw(step)
        site = self._site(step)
        p = site.predict(x, None)
        # EntMin differentiates through p; the VAT terms hold it constant.
        entropy_term = self.entropy_weight * entropy(p) if self.entropy_weight else 0
        p = ops.stop_gradient(p)
        d = keras.random.normal(site.shape(x), seed=step.seed(self.noise_seed))
        d = site.restrict(d)
        for _ in range(self.iters):
            probe = self.xi * normalize(d, self.norm)
            d = step.gradient_of(
                lambda delta: kl_divergence(p, site.predict(x, delta)), probe
            )
        r = ops.stop_gradient(self.epsilon * normalize(d, self.norm))
        vat_loss = kl_divergence(p, site.predict(x, r))
        return step.loss + self.weight * vat_loss + entropy_term

    def _site(self, step):
        if self.embedding_name is None:
            return _InputSite(step)
        layer = find_embedding_layer(step.model, self.embedding_name)
        if self.perturb == "output":
            return _OutputSite(step, layer)
        return _MatrixSite(step, layer)

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "epsilon": self.epsilon,
            "xi": self.xi,
            "iters": self.iters,
            "unlabeled_batch_size": self.unlabeled_batch_size,
            "weight": self.weight,
            "perturb": self.perturb,
            "norm": self.norm,
            "seed": self.seed,
            "entropy_weight": self.entropy_weight,
        }


class _InputSite:
    """Perturbs the model's (single, float) input."""

    def __init__(self, step):
        self.step = step

    def shape(self, x):
        return ops.shape(x)

    def restrict(self, d):
        return d

    def predict(self, x, delta):
        return self.step.forward(x if delta is None else x + delta)


class _OutputSite:
    """Perturbs the embedding layer's output (the embedded sequence)."""

    def __init__(self, step, layer):
        self.step = step
        self.layer = layer
        self.ids = None

    def shape(self, x):
        return (*ops.shape(self.ids), embedding_matrix(self.layer).shape[1])

    def restrict(self, d):
        return d

    def predict(self, x, delta):
        def transform(output, ids):
            if len(output.shape) != len(ids.shape) + 1:
                return output  # not a lookup: bert4keras's Embedding as output head
            self.ids = ids
            if delta is None:
                return output
            return output + ops.cast(self.lookup(delta, ids), output.dtype)

        return self.step.forward(x, layer=self.layer, transform=transform)

    def lookup(self, delta, ids):
        """Returns the perturbation of the layer output for ``ids``."""
        del ids
        return delta


class _MatrixSite(_OutputSite):
    """Perturbs the rows of the embedding matrix used by the unlabelled batch.

    Without a ``vocabulary x dim`` tensor: the N token occurrences of the batch
    are grouped by id (sort + cumsum, static shapes, so XLA compiles it), and the
    perturbation holds one row per distinct id in slots ``0 .. distinct - 1`` of
    an ``N x dim`` tensor (the other slots stay zero). Slot k is the k-th
    smallest id of the batch.
    """

    def shape(self, x):
        return (ops.size(self.ids), embedding_matrix(self.layer).shape[1])

    def restrict(self, d):
        _, distinct = _group_by_id(self.ids)
        used = ops.arange(ops.shape(d)[0]) < distinct
        return d * ops.cast(used, d.dtype)[:, None]

    def lookup(self, delta, ids):
        slot, _ = _group_by_id(ids)
        rows = ops.take(delta, slot, axis=0)
        return ops.reshape(rows, (*ops.shape(ids), ops.shape(delta)[-1]))


def _group_by_id(ids):
    """Returns (slot of each occurrence, number of distinct ids), slots by id order."""
    flat = ops.reshape(ops.cast(ids, "int32"), (-1,))
    order = ops.argsort(flat)
    ordered = ops.take(flat, order)
    starts = ops.cast(ordered[1:] != ordered[:-1], "int32")
    slots_in_order = ops.cumsum(ops.concatenate([ops.zeros((1,), "int32"), starts]))
    slot = ops.take(slots_in_order, ops.argsort(order))
    return slot, slots_in_order[-1] + 1


@check_options
def virtual_adversarial_training(
    model,
    embedding_name=None,
    epsilon=1.0,
    xi=10.0,
    iters=1,
    unlabeled=None,
    unlabeled_batch_size=None,
    weight=1.0,
    perturb="matrix",
    norm=None,
    seed=None,
    entropy_weight=0.0,
):
    """Trains a compiled model with VAT on unlabelled data, in one ``fit``.

    See `VAT` for the maths and the arguments. The labelled data goes through
    ``fit``; an unlabelled batch is drawn from ``unlabeled`` at every step.

    Returns:
        ``model``.

    Raises:
        ValueError: A bad argument (named in the message), the model is not
            compiled, or the embedding layer is not found.

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.virtual_adversarial_training(
        ...     model, "Embedding-Token", epsilon=1.0, xi=10.0, unlabeled=x_u)
        >>> model.fit(x_labeled, y_labeled, epochs=10)
    """
    regularizer = VAT(
        embedding_name=embedding_name,
        epsilon=epsilon,
        xi=xi,
        iters=iters,
        unlabeled=unlabeled,
        unlabeled_batch_size=unlabeled_batch_size,
        weight=weight,
        perturb=perturb,
        norm=norm,
        seed=seed,
        entropy_weight=entropy_weight,
    )
    return step_module.install(model, regularizer)
