"""`adversarial_training`: one function for the embedding adversaries."""

from keras_reg.training.adversarial.fgm import FGM
from keras_reg.training.adversarial.free_fgm import FreeFGM
from keras_reg.training.adversarial.freelb import FreeLB
from keras_reg.training.adversarial.pgd import PGD
from keras_reg.training.core import installer
from keras_reg.training.core.export import export
from keras_reg.validation import check_options

_METHODS = ("fgm", "pgd", "freelb", "free_fgm")
# The options each method takes besides embedding_name and epsilon.
_OPTIONS = {
    "fgm": ("add_clean_loss",),
    "pgd": ("add_clean_loss", "alpha", "steps"),
    "freelb": ("alpha", "steps", "init_scale", "seed"),
    "free_fgm": (),
}


@export()
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
    metrics, callbacks). Each method also has its own installer with all of
    its class's options: `keras_reg.fgm`, `keras_reg.pgd`, `keras_reg.freelb`,
    `keras_reg.free_fgm`. Calling it again replaces the previous regulariser;
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
    return installer.install(
        model, _regularizer(method, embedding_name, epsilon, options)
    )


def _regularizer(method, embedding_name, epsilon, options):
    if method == "fgm":
        return FGM(embedding_name, epsilon=epsilon, **options)
    if method == "pgd":
        return PGD(embedding_name, epsilon=epsilon, **options)
    if method == "freelb":
        return FreeLB(embedding_name, epsilon=epsilon, **options)
    return FreeFGM(embedding_name, epsilon=epsilon)
