"""FGM adversarial training on an embedding matrix.

References:
    Goodfellow, Shlens, Szegedy. Explaining and Harnessing Adversarial Examples.
    ICLR 2015. https://arxiv.org/abs/1412.6572

    Miyato, Dai, Goodfellow. Adversarial Training Methods for Semi-Supervised
    Text Classification. ICLR 2017. https://arxiv.org/abs/1605.07725

    Su Jianlin. 对抗训练浅谈：意义、方法和思考 (On adversarial training: meaning,
    methods and thoughts). https://kexue.fm/archives/7234
"""

from keras_reg._compat import keras
from keras_reg.training import schedule
from keras_reg.training import step as step_module
from keras_reg.training.embedding import embedding_matrix, find_embedding_layer
from keras_reg.training.regularizer import TrainingRegularizer, register
from keras_reg.validation import boolean, check_options

ops = keras.ops


def embedding_name_argument(embedding_name):
    """Returns ``embedding_name`` after checking it is a non-empty string."""
    if not isinstance(embedding_name, str) or not embedding_name:
        raise ValueError(
            "`embedding_name` must be the name of an embedding layer, received "
            f"embedding_name={embedding_name!r}."
        )
    return embedding_name


def check_embedding_and_loss(regularizer, model):
    """Checks that ``model`` has the embedding layer and a compiled loss."""
    find_embedding_layer(model, regularizer.embedding_name)
    if getattr(model, "loss", None) is None:
        raise ValueError(
            f"{type(regularizer).__name__} needs the model's training loss, but "
            f"model {model.name!r} was compiled without one. Compile with a "
            "loss, e.g. `model.compile(optimizer='adam', "
            "loss='sparse_categorical_crossentropy')`."
        )


def clean_term_variables(model, matrix):
    """The variables the clean term is differentiated with respect to."""
    variables = list(model.trainable_variables)
    if all(v is not matrix for v in variables):
        variables.append(matrix)
    return variables


def clean_gradient(step, matrix, add_clean_loss):
    """Returns the clean gradient dL/dE (global) and the clean term, or None.

    With ``add_clean_loss`` every clean gradient is taken in one backward
    pass (`Step.clean_gradients`) and the clean term is `Step.linear_loss` of
    them: the step's own backward pass then does not go through the clean pass
    again (before: the pass to E for the direction, then the trainer's full
    backward pass of the clean loss). Otherwise only dL/dE is taken (of the
    scaled loss: the direction is invariant to the loss scale).
    """
    if not add_clean_loss:
        return step.loss_gradient(matrix), None
    variables = clean_term_variables(step.model, matrix)
    loss, gradients = step.clean_gradients(variables)
    index = next(i for i, v in enumerate(variables) if v is matrix)
    direction = step.global_sum(gradients[index])
    return direction, step.linear_loss(loss, variables, gradients)


def with_clean_term(clean, adversarial):
    """``clean + adversarial`` (in the adversarial loss's dtype), or ``adversarial``."""
    if clean is None:
        return adversarial
    return ops.cast(clean, adversarial.dtype) + adversarial


@register
class FGM(TrainingRegularizer):
    """Fast gradient method on an embedding matrix (Miyato et al. 2017).

    With L the training loss of the batch (compiled loss with sample weights,
    plus the model's regularisation losses), E the embedding matrix and
    g = dL/dE (rows of repeated tokens summed, unused rows zero), the step uses

        delta = epsilon * g / ||g||_F        (norm over the whole matrix)

    (no perturbation where ||g|| is 0 or not finite: a NaN batch perturbs
    nothing)
    and applies the optimizer, to the unperturbed weights, the gradients of
    L(E + delta) with respect to all trainable weights (E included). With
    ``add_clean_loss=True`` it uses the gradients of L(E) + L(E + delta)
    instead, the common variant that keeps the clean gradient.

    The perturbed pass is a second ordinary training forward pass: like the
    clean one it draws its own dropout mask and updates BatchNormalization
    statistics. Every reader of E sees E + delta: a tied output head too. The
    loss ``fit`` reports is the loss being optimized; ``adversarial_loss``
    in the logs is L(E + delta).

    Args:
        embedding_name: Name of the embedding layer, e.g. ``'Embedding-Token'``
            for bert4keras's BERT.
        epsilon: Norm of the perturbation of the whole matrix. The source post
            uses 1 for BERT fine-tuning (0.5 in some tasks). Or a schedule of
            the step, e.g. a ramp (see `keras_reg.training.schedule`).
        add_clean_loss: Optimize L(E) + L(E + delta) instead of L(E + delta).

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> model = keras_reg.training.install(
        ...     model, FGM("Embedding-Token", epsilon=1.0))
    """

    def __init__(self, embedding_name, epsilon=1.0, add_clean_loss=False):
        self.embedding_name = embedding_name_argument(embedding_name)
        self.epsilon = schedule.strength("epsilon", epsilon, example=1.0)
        self.add_clean_loss = boolean("add_clean_loss", add_clean_loss)

    def validate(self, model):
        check_embedding_and_loss(self, model)

    def logged_terms(self):
        return ("adversarial_loss",)

    def watched_variables(self, model):
        matrix = self._matrix(model)
        if not self.add_clean_loss:
            return [matrix]
        return clean_term_variables(model, matrix)

    def regularized_loss(self, step):
        layer = find_embedding_layer(step.model, self.embedding_name)
        matrix = embedding_matrix(layer)
        gradient, clean = clean_gradient(step, matrix, self.add_clean_loss)
        delta = step.scale_to_norm(gradient, schedule.current(step, self.epsilon))
        adversarial = step.loss_with_perturbation(layer, matrix, delta)
        step.log("adversarial_loss", adversarial)
        return with_clean_term(clean, adversarial)

    def _matrix(self, model):
        return embedding_matrix(find_embedding_layer(model, self.embedding_name))

    def get_config(self):
        return {
            "embedding_name": self.embedding_name,
            "epsilon": schedule.serialize(self.epsilon),
            "add_clean_loss": self.add_clean_loss,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("epsilon", "alpha"):
            if key in config:
                config[key] = schedule.deserialize(config[key])
        return cls(**config)


_METHODS = ("fgm", "pgd", "freelb", "free_fgm")
# The options each method takes besides embedding_name and epsilon.
_OPTIONS = {
    "fgm": ("add_clean_loss",),
    "pgd": ("add_clean_loss", "alpha", "steps"),
    "freelb": ("alpha", "steps", "init_scale", "seed"),
    "free_fgm": (),
}


@check_options
def adversarial_training(
    model,
    embedding_name,
    epsilon=1.0,
    add_clean_loss=None,
    method="fgm",
    alpha=None,
    steps=None,
    init_scale=None,
    seed=None,
):
    """Trains a compiled model with adversarial perturbations of an embedding.

    One line after ``compile``; ``fit`` then works as usual (progress bar,
    metrics, callbacks). Calling it again replaces the previous regulariser;
    `keras_reg.remove_regularization` restores the plain step.

    Args:
        model: A compiled Keras 3 (TensorFlow, JAX or PyTorch backend) or
            tf_keras model.
        embedding_name: Name of the embedding layer to perturb.
        epsilon: Norm of the perturbation (see each method), or a schedule.
        add_clean_loss: Also keep the clean loss's gradient (FGM, PGD; None:
            the method's default, False for FGM and True for PGD).
        method: ``'fgm'`` (`FGM`), ``'pgd'`` (`keras_reg.PGD`), ``'freelb'``
            (`keras_reg.FreeLB`) or ``'free_fgm'`` (`keras_reg.FreeFGM`).
        alpha: Ascent step norm (PGD, FreeLB; None: the method's default).
        steps: Ascent steps (PGD, FreeLB; None: the method's default).
        init_scale: Scale of FreeLB's random start (None: 0).
        seed: Seed of FreeLB's random start.

    Returns:
        ``model``.

    Raises:
        ValueError: The model is not compiled, no layer has that name, the
            layer has no embedding matrix, ``epsilon`` is not positive, the
            method is unknown, or an option does not belong to the method.

    Example:
        >>> model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        >>> keras_reg.adversarial_training(model, "Embedding-Token", epsilon=1.0)
        >>> keras_reg.adversarial_training(model, "Embedding-Token", method="pgd")
        >>> model.fit(x, y, epochs=3)
    """
    if method not in _METHODS:
        raise ValueError(
            f"`method` must be one of {', '.join(map(repr, _METHODS))}; received "
            f"method={method!r}."
        )
    given = {
        "add_clean_loss": add_clean_loss,
        "alpha": alpha,
        "steps": steps,
        "init_scale": init_scale,
        "seed": seed,
    }
    options = {k: v for k, v in given.items() if v is not None}
    for name in options:
        if name not in _OPTIONS[method]:
            takes = ", ".join(_OPTIONS[method]) or "no other option"
            raise ValueError(
                f"adversarial_training(method={method!r}) does not take "
                f"`{name}` (received {name}={options[name]!r}); it takes "
                f"embedding_name, epsilon and {takes}."
            )
    return step_module.install(
        model, _regularizer(method, embedding_name, epsilon, options)
    )


def _regularizer(method, embedding_name, epsilon, options):
    if method == "fgm":
        return FGM(embedding_name, epsilon=epsilon, **options)
    # Imported here: those modules build on this one.
    if method == "pgd":
        from keras_reg.training.pgd import PGD

        return PGD(embedding_name, epsilon=epsilon, **options)
    if method == "freelb":
        from keras_reg.training.freelb import FreeLB

        return FreeLB(embedding_name, epsilon=epsilon, **options)
    from keras_reg.training.free_fgm import FreeFGM

    return FreeFGM(embedding_name, epsilon=epsilon)
