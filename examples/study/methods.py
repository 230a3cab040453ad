"""The study's methods: one entry each, with the strength grid it is tuned on.

A `Method` names the strength it tunes, its grid per data set and a factory
``make(strength, task, seed)`` returning what ``keras_reg.install_regularizer``
takes (None: plain training). A `Combination` lists other entries; each part
uses the strength chosen for it alone on the same task, so a combination runs
no grid of its own. Adding a method or a combination is one line in METHODS.

Two kinds of entries need library features that may not be there yet; they are
skipped, with a note, until they are:

- combinations: ``keras_reg.install_regularizer(model, [A, B])``;
- a scale-free (relative) epsilon, ``keras_reg.relative(r)``: an epsilon given
  as a fraction of the norm of what it perturbs (RELATIVE below).
"""

import keras_reg
from study.data import EMBEDDING


class Method:
    """A single regulariser and its strength grid.

    Args:
        strength: The name of the tuned argument (None: nothing to tune).
        grids: ``{data set: (values...)}``, data set ``'digits'`` or
            ``'sentiment'`` (a task's name up to its first ``-``).
        make: ``make(strength, task, seed)`` -> a regulariser, or None.
        tasks: The tasks it runs on.
        available: A function telling whether the library has what it needs.
    """

    parts = ()

    def __init__(self, strength, grids, make, tasks, available=None):
        self.strength, self.grids, self.make, self.tasks = strength, grids, make, tasks
        self.available = available or (lambda: True)

    def grid(self, task_name):
        return tuple(self.grids.get(task_name.split("-")[0], ())) if self.grids else ()


class Combination(Method):
    """Several entries installed together, each at its own chosen strength."""

    def __init__(self, *parts, tasks=("digits", "sentiment")):
        super().__init__(None, None, None, tasks, available=composition_available)
        self.parts = parts

    def make_all(self, strengths, task, seed):
        return [METHODS[p].make(s, task, seed) for p, s in zip(self.parts, strengths)]


_PROBED = {}


def composition_available():
    """Whether ``install_regularizer`` takes a list (tried on a tiny model)."""
    if "composition" not in _PROBED:
        from keras_reg._compat import keras

        model = keras.Sequential(
            [keras.Input((2,)), keras.layers.Dense(2, activation="softmax")]
        )
        model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        try:
            keras_reg.install_regularizer(
                model, [keras_reg.NoiseTraining(stddev=0.1), keras_reg.SAM(rho=0.05)]
            )
            _PROBED["composition"] = True
        except TypeError:  # "not a regulariser instance": a list is not taken
            _PROBED["composition"] = False
    return _PROBED["composition"]


def relative_available():
    return hasattr(keras_reg, "relative")


SUPERVISED = ("digits", "sentiment")
FEW_LABELS = ("digits-100", "sentiment-200")
# Digits runs are cheap: 4 values; sentiment: 3 (see runner.COST).
EPSILONS = {"digits": (0.1, 0.3, 1.0, 3.0), "sentiment": (0.3, 1.0, 3.0)}


def _vat(epsilon, task, seed):
    digits = task.name.startswith("digits")
    return keras_reg.VAT(
        EMBEDDING,
        epsilon=epsilon,
        xi=1.0,
        perturb="output",
        # Digits: each image's perturbation has norm epsilon; sentiment: the
        # whole batch's (examples/sentiment_vat.py's setting).
        norm="example" if digits else "batch",
        unlabeled=task.unlabeled,
        unlabeled_batch_size=128 if digits else 64,
        seed=seed,
    )


def _relative(r):
    return keras_reg.relative(r)


METHODS = {
    "plain": Method(None, None, lambda s, t, k: None, SUPERVISED + FEW_LABELS),
    "FGM": Method(
        "epsilon",
        EPSILONS,
        lambda s, t, k: keras_reg.FGM(EMBEDDING, epsilon=s),
        SUPERVISED,
    ),
    "PGD": Method(
        "epsilon",
        EPSILONS,
        lambda s, t, k: keras_reg.PGD(EMBEDDING, epsilon=s, alpha=0.3 * s, steps=3),
        SUPERVISED,
    ),
    "FreeLB": Method(
        "epsilon",
        EPSILONS,
        lambda s, t, k: keras_reg.FreeLB(
            EMBEDDING, epsilon=s, alpha=0.3 * s, steps=3, seed=k
        ),
        SUPERVISED,
    ),
    "FreeFGM": Method(
        "epsilon",
        EPSILONS,
        lambda s, t, k: keras_reg.FreeFGM(EMBEDDING, epsilon=s),
        SUPERVISED,
    ),
    "gradient penalty": Method(
        "weight",
        {"digits": (0.1, 1.0, 10.0, 100.0), "sentiment": (1.0, 10.0, 100.0)},
        lambda s, t, k: keras_reg.GradientPenalty(EMBEDDING, weight=s),
        SUPERVISED,
    ),
    "noise": Method(
        "stddev",
        {"digits": (0.01, 0.03, 0.1, 0.3), "sentiment": (0.01, 0.03, 0.1)},
        lambda s, t, k: keras_reg.NoiseTraining(EMBEDDING, stddev=s, seed=k),
        SUPERVISED,
    ),
    "R-Drop": Method(
        "weight",
        {"digits": (0.1, 0.5, 2.0, 8.0), "sentiment": (0.5, 2.0, 8.0)},
        lambda s, t, k: keras_reg.RDrop(weight=s),
        SUPERVISED,
    ),
    "SAM": Method(
        "rho",
        {"digits": (0.01, 0.05, 0.2, 0.5), "sentiment": (0.01, 0.05, 0.2)},
        lambda s, t, k: keras_reg.SAM(rho=s),
        SUPERVISED,
    ),
    "AWP": Method(
        "gamma",
        {"digits": (1e-3, 3e-3, 1e-2, 3e-2), "sentiment": (1e-3, 5e-3, 2e-2)},
        lambda s, t, k: keras_reg.AWP(gamma=s),
        SUPERVISED,
    ),
    "VAT": Method(
        "epsilon",
        {"digits": (0.1, 0.3, 1.0, 3.0), "sentiment": (0.3, 1.0, 3.0)},
        _vat,
        FEW_LABELS,
    ),
    # RELATIVE: FGM with a scale-free epsilon, a fraction of the norm of the
    # embedding rows it perturbs (needs keras_reg.relative).
    "FGM (relative epsilon)": Method(
        "relative",
        {"digits": (0.01, 0.03, 0.1, 0.3), "sentiment": (0.03, 0.1, 0.3)},
        lambda s, t, k: keras_reg.FGM(EMBEDDING, epsilon=_relative(s)),
        SUPERVISED,
        available=relative_available,
    ),
    # Combinations (need install_regularizer(model, [A, B])): an input-space
    # adversary with a consistency term, and with a weight-space adversary.
    "FGM + R-Drop": Combination("FGM", "R-Drop"),
    "FGM + AWP": Combination("FGM", "AWP"),
    "FGM + SAM": Combination("FGM", "SAM"),
}
