"""Lipschitz control on scikit-learn's 8x8 digits: plain vs constraint vs wrapper.

``load_digits`` (1,797 scans), pixels scaled to [0, 1], the split of
examples/digits_vat.py (1,347 train, 450 test, stratified, ``random_state=0``),
all labels. The same MLP, 64-256-256-10 with ReLU, then a fixed ``Rescaling(10)``
of the logits (the same in all three models: a network whose layers are all
1-Lipschitz needs a logit scale to reach confident predictions), trained with
Adam 1e-3, batch 64, for 60 epochs:

- plain;
- ``kernel_constraint=keras_reg.constraints.SpectralNorm(1.0)`` on the three
  Dense kernels (projected after every update);
- each Dense wrapped in ``keras_reg.layers.SpectralNormalization`` (W / sigma(W)
  in the forward pass, 1 power iteration per step).

Measured on the test set, per model, with NumPy from the trained weights (the
effective kernels ``W / sigma`` for the wrapper; the NumPy forward pass is
checked against ``model.predict``), so the numbers mean the same on every
backend:

- the Lipschitz bound of the logits in L2: 10 x the product of the three
  kernels' largest singular values (numpy.linalg.svd; ReLU is 1-Lipschitz);
- the empirical gradient norm: the spectral norm of the input Jacobian of the
  logits (a ReLU network is piecewise linear: J = 10 W1 D1 W2 D2 W3), mean and
  max over test points: the local Lipschitz constant, <= the bound;
- test accuracy, and accuracy under FGSM: x + eps * sign(grad_x loss), clipped
  to [0, 1], for eps in 0.02, 0.05, 0.1, 0.2 (pixel units, L-infinity).

Writes ``results/digits_lipschitz.md`` (mean +- std over seeds, and per seed)
and ``results/digits_lipschitz.png``.

Usage:
    python examples/digits_lipschitz.py           # 3 seeds, ~2-3 minutes on 2 CPUs
    python examples/digits_lipschitz.py --quick   # 1 seed, 10 epochs
    KERAS_BACKEND=jax python examples/digits_lipschitz.py   # or torch
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from keras_reg import constraints, layers  # noqa: E402
from keras_reg._compat import keras  # noqa: E402

LOGIT_SCALE = 10.0
EPSILONS = (0.02, 0.05, 0.1, 0.2)
VARIANTS = {
    "plain": "plain",
    "constraint": "constraint SpectralNorm(1.0)",
    "wrapper": "wrapper SpectralNormalization",
}


def load_split():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(
        x, digits.target, test_size=450, stratify=digits.target, random_state=0
    )


def build(variant):
    """The MLP of ``variant``; returns the model and its three Dense layers."""
    options = {}
    if variant == "constraint":
        options = {"kernel_constraint": constraints.SpectralNorm(1.0)}
    dense = [
        keras.layers.Dense(256, activation="relu", **options),
        keras.layers.Dense(256, activation="relu", **options),
        keras.layers.Dense(10, **options),
    ]
    if variant == "wrapper":
        dense = [layers.SpectralNormalization(layer) for layer in dense]
    model = keras.Sequential(
        [keras.Input((64,)), *dense, keras.layers.Rescaling(LOGIT_SCALE)]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(1e-3),
    )
    return model, dense


def effective_weights(dense):
    """(kernel, bias) per layer as the forward pass uses them, in float64."""
    weights = []
    for layer in dense:
        if isinstance(layer, layers.SpectralNormalization):
            kernel, bias = layer.normalized_weight(training=False), layer.layer.bias
        else:
            kernel, bias = layer.kernel, layer.bias
        weights.append((_float64(kernel), _float64(bias)))
    return weights


def _float64(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def forward(weights, x):
    """Logits and the ReLU on/off patterns of the hidden layers."""
    h, patterns = x, []
    for index, (kernel, bias) in enumerate(weights):
        h = h @ kernel + bias
        if index < len(weights) - 1:
            patterns.append(h > 0)
            h = np.maximum(h, 0.0)
    return LOGIT_SCALE * h, patterns


def jacobians(weights, patterns):
    """Input Jacobians (n, 64, 10) of the logits: 10 W1 D1 W2 D2 W3."""
    product = LOGIT_SCALE * weights[-1][0][None]
    for index in range(len(weights) - 2, -1, -1):
        product = (weights[index][0][None] * patterns[index][:, None, :]) @ product
    return product


def measure(weights, x, y):
    logits, patterns = forward(weights, x)
    jacobian = jacobians(weights, patterns)
    gradient_norms = np.linalg.norm(jacobian, ord=2, axis=(1, 2))
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    loss_gradient = np.einsum("nij,nj->ni", jacobian, probabilities - np.eye(10)[y])
    fgsm = []
    for epsilon in EPSILONS:
        attacked = np.clip(x + epsilon * np.sign(loss_gradient), 0.0, 1.0)
        fgsm.append(float(np.mean(forward(weights, attacked)[0].argmax(1) == y)))
    spectra = [np.linalg.svd(kernel, compute_uv=False) for kernel, _ in weights]
    sigmas = [spectrum[0] for spectrum in spectra]
    return {
        "accuracy": float(np.mean(logits.argmax(1) == y)),
        "bound": float(LOGIT_SCALE * np.prod(sigmas)),
        "sigmas": [float(s) for s in sigmas],
        # ||W||_F^2 / sigma^2: how many directions carry weight.
        "stable_ranks": [float(np.sum(sp**2) / sp[0] ** 2) for sp in spectra],
        "gradient_mean": float(gradient_norms.mean()),
        "gradient_max": float(gradient_norms.max()),
        "fgsm": fgsm,
    }


def run(variant, seed, data, epochs):
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(seed)
    model, dense = build(variant)
    began = time.time()
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    seconds = time.time() - began
    weights = effective_weights(dense)
    logits = forward(weights, x_test.astype(np.float64))[0]
    predicted = model.predict(x_test, verbose=0)
    np.testing.assert_allclose(logits, predicted, rtol=1e-3, atol=1e-3)
    result = measure(weights, x_test.astype(np.float64), y_test)
    result["seconds"] = seconds
    return result


def mean_std(values, digits=3):
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"


def table(results, seeds, epochs, total):
    lines = [
        f"Digits (8x8): 1,347 train, 450 test; MLP 64-256-256-10 (ReLU), logits x "
        f"{LOGIT_SCALE:g}; Adam 1e-3, batch 64, {epochs} epochs; {seeds} seed(s); "
        f"Keras {keras.__version__} on {keras.backend.backend()} ({total:.0f} s)",
        "",
        "| training | test accuracy | Lipschitz bound (10 x prod sigma) | "
        "grad norm mean | grad norm max | "
        + " | ".join(f"FGSM eps {e:g}" for e in EPSILONS)
        + " | train s |",
        "|---" * (6 + len(EPSILONS)) + "|",
    ]
    for variant, runs in results.items():
        cells = [
            VARIANTS[variant],
            mean_std([r["accuracy"] for r in runs]),
            mean_std([r["bound"] for r in runs], 2),
            mean_std([r["gradient_mean"] for r in runs], 2),
            mean_std([r["gradient_max"] for r in runs], 2),
            *(mean_std([r["fgsm"][i] for r in runs]) for i in range(len(EPSILONS))),
            f"{np.mean([r['seconds'] for r in runs]):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per seed: accuracy; per-layer sigma of the effective kernel; per-layer "
        "stable rank ||W||_F^2 / sigma^2",
        "",
    ]
    for variant, runs in results.items():
        for seed, r in enumerate(runs):
            sigmas = ", ".join(f"{s:.3f}" for s in r["sigmas"])
            ranks = ", ".join(f"{s:.1f}" for s in r["stable_ranks"])
            lines.append(
                f"- {VARIANTS[variant]}, seed {seed}: accuracy {r['accuracy']:.3f}; "
                f"sigma {sigmas}; stable rank {ranks}"
            )
    return "\n".join(lines) + "\n"


def plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    epsilons = (0.0, *EPSILONS)
    for variant, runs in results.items():
        curves = np.array([[r["accuracy"], *r["fgsm"]] for r in runs])
        left.errorbar(
            epsilons,
            curves.mean(0),
            yerr=curves.std(0),
            marker="o",
            capsize=3,
            label=VARIANTS[variant],
        )
    left.set_xlabel("FGSM epsilon (L-infinity, pixels in [0, 1])")
    left.set_ylabel("test accuracy")
    left.set_title("accuracy under FGSM (mean +- std over seeds)")
    left.legend()
    names = list(results)
    positions = np.arange(len(names))
    for offset, (key, label) in zip(
        (-0.25, 0.0, 0.25),
        (
            ("bound", "Lipschitz bound (10 x prod sigma)"),
            ("gradient_max", "max ||J(x)|| over test points"),
            ("gradient_mean", "mean ||J(x)||"),
        ),
    ):
        values = np.array([[r[key] for r in results[n]] for n in names])
        right.bar(
            positions + offset,
            values.mean(1),
            width=0.25,
            yerr=values.std(1),
            capsize=3,
            label=label,
        )
    right.set_xticks(positions, names)
    right.set_yscale("log")
    right.set_title("Lipschitz bound vs empirical gradient norm (logits, L2)")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 10 epochs")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--output-dir", default="results")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (10 if args.quick else 60)
    data = load_split()
    results = {variant: [] for variant in VARIANTS}
    start = time.time()
    for seed in range(seeds):
        for variant in VARIANTS:
            r = run(variant, seed, data, epochs)
            results[variant].append(r)
            print(
                f"seed {seed} {VARIANTS[variant]}: accuracy {r['accuracy']:.3f}, "
                f"bound {r['bound']:.2f}, grad norm mean {r['gradient_mean']:.2f} "
                f"max {r['gradient_max']:.2f}, FGSM "
                + ", ".join(f"{a:.3f}" for a in r["fgsm"])
                + f" ({r['seconds']:.0f} s)",
                flush=True,
            )
    report = table(results, seeds, epochs, time.time() - start)
    print(report)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "digits_lipschitz.md"), "w") as f:
        f.write(report)
    plot(os.path.join(args.output_dir, "digits_lipschitz.png"), results)


if __name__ == "__main__":
    main()
