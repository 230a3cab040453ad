"""Extra peak memory of every regulariser over a plain step, per backend.

The model: a 500,000 x 128 embedding, dropout, mean pooling and a two-layer
head (the large-vocabulary case, where anything of the vocabulary's size is
256 MB per float32 copy), Adam, batches of 32 x 64 token ids. Each cell runs
in a child process of its own (``KERAS_BACKEND`` is per process): it builds
the model, installs the regulariser, runs 5 warm-up steps (tracing,
compilation, optimizer slots), then 25 steps (``--steps``) while a thread samples the
resident set size (``/proc/self/statm``) every millisecond. Reported:

- extra peak: the cell's peak minus the plain step's peak, same backend and
  mode, in MB;
- growth: the resident memory after those steps minus before them, in MB
  (a per-step leak shows here);
- the seconds of those steps, in the JSON only (one run on a shared machine:
  not a step-time ratio; see the step-time benchmarks for those).

Backends: TensorFlow graph, TensorFlow XLA (``jit_compile=True``), JAX jit,
PyTorch eager. The input gradient penalty differentiates float inputs: it
does not apply to a token model (``n/a``).

Usage:
    nice python benchmarks/memory_table.py               # every cell (~1 hour)
    python benchmarks/memory_table.py --quick            # vocab 20,000, 4 steps
    python benchmarks/memory_table.py --only free_fgm fgm --backends tf-xla
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BACKENDS = {
    "tf-graph": ("tensorflow", False),
    "tf-xla": ("tensorflow", True),
    "jax": ("jax", True),
    "torch": ("torch", False),
}
HIDDEN = 128
LENGTH = 64
BATCH = 32


def _regularizers(keras_reg, unlabeled):
    """Name -> factory of a fresh regulariser on the layer named ``emb``."""
    return {
        "plain": None,
        "fgm": lambda: keras_reg.FGM("emb", epsilon=1.0),
        "pgd3": lambda: keras_reg.PGD("emb", epsilon=1.0, alpha=0.3, steps=3),
        "freelb3": lambda: keras_reg.FreeLB("emb", epsilon=1.0, alpha=0.3, steps=3),
        "free_fgm": lambda: keras_reg.FreeFGM("emb", epsilon=1.0),
        "free_fgm_rows": lambda: keras_reg.FreeFGM(
            "emb", epsilon=1.0, batch_tokens=BATCH * LENGTH
        ),
        "vat_matrix": lambda: keras_reg.VAT("emb", epsilon=1.0, xi=1.0, seed=1),
        "vat_output": lambda: keras_reg.VAT(
            "emb", epsilon=1.0, xi=1.0, perturb="output", unlabeled=unlabeled, seed=1
        ),
        "gp_occurrence": lambda: keras_reg.GradientPenalty("emb", weight=1.0),
        "gp_row": lambda: keras_reg.GradientPenalty("emb", weight=1.0, per="row"),
        "parameter_gp": lambda: keras_reg.ParameterGradientPenalty(0.1),
        "noise": lambda: keras_reg.NoiseTraining("emb", stddev=0.1, seed=2),
        "sam": lambda: keras_reg.SAM(rho=0.05),
        "asam": lambda: keras_reg.SAM(rho=0.5, adaptive=True),
        "awp": lambda: keras_reg.AWP(gamma=0.01),
        "rdrop": lambda: keras_reg.RDrop(weight=1.0),
        "input_gp": "n/a",
    }


NAMES = [
    "plain", "fgm", "pgd3", "freelb3", "free_fgm", "free_fgm_rows", "vat_matrix",
    "vat_output", "gp_occurrence", "gp_row", "parameter_gp", "noise", "sam",
    "asam", "awp", "rdrop", "input_gp",
]  # fmt: skip


def rss_mb():
    """The resident set size of this process, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler(threading.Thread):
    """Samples the resident set size every millisecond; keeps the maximum."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = rss_mb()
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.001)


def built(name, jit_compile, vocab):
    """Returns ``(model, x, y)``: the cell's compiled model, ``name`` installed."""
    import numpy as np

    import keras_reg
    from keras_reg._compat import keras

    rng = np.random.default_rng(0)
    x = rng.integers(1, vocab, (BATCH, LENGTH)).astype("int32")
    y = rng.integers(0, 2, (BATCH,)).astype("int32")
    unlabeled = rng.integers(1, vocab, (BATCH, LENGTH)).astype("int32")
    keras.utils.set_random_seed(0)
    tokens = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(vocab, HIDDEN, name="emb")(tokens)
    h = keras.layers.Dropout(0.1)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(HIDDEN, activation="relu")(h)
    model = keras.Model(tokens, keras.layers.Dense(2)(h))
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    factory = _regularizers(keras_reg, unlabeled)[name]
    if factory is not None:
        keras_reg.install_regularizer(model, factory())
    return model, x, y


def child(name, jit_compile, vocab, steps):
    """Runs one cell in this process; prints its JSON result as the last line."""
    model, x, y = built(name, jit_compile, vocab)
    for _ in range(5):
        model.train_on_batch(x, y)
    before = rss_mb()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    print(
        json.dumps(
            {
                "peak_mb": sampler.peak,
                "growth_mb": rss_mb() - before,
                "seconds": seconds,
            }
        )
    )


def run_cell(backend, name, vocab, steps, timeout):
    """Runs one cell in a child process; returns its result or an error."""
    framework, jit = BACKENDS[backend]
    env = dict(os.environ, KERAS_BACKEND=framework, TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("PYTHONHASHSEED", "0")
    command = [sys.executable, os.path.abspath(__file__), "--child", name]
    command += [str(int(jit)), str(vocab), str(steps)]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:160]}
    return json.loads(lines[-1])


def _cell(result, plain):
    if result == "n/a":
        return "n/a"
    if "error" in result:
        return "error"
    if plain is None or "error" in plain:
        return f"peak {result['peak_mb']:.0f}"
    extra = result["peak_mb"] - plain["peak_mb"]
    return f"{extra:+.0f} / {result['growth_mb']:+.0f}"


def markdown(results, backends, names):
    """The table: extra peak MB / growth MB over the steps."""
    head = "| regulariser | " + " | ".join(backends) + " |"
    rows = [head, "|---" * (len(backends) + 1) + "|"]
    for name in names:
        cells = []
        for backend in backends:
            result = results.get(backend, {}).get(name)
            plain = results.get(backend, {}).get("plain")
            if result is None:
                cells.append("")
            elif name == "plain" and "error" not in result:
                cells.append(
                    f"peak {result['peak_mb']:.0f} MB / {result['growth_mb']:+.0f}"
                )
            else:
                cells.append(_cell(result, plain))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="regularisers")
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--output", default="results/memory_table.json")
    parser.add_argument(
        "--table", nargs="*", default=None, help="print the table of these JSONs"
    )
    args = parser.parse_args()
    if args.child:
        name, jit, vocab, steps = args.child
        child(name, bool(int(jit)), int(vocab), int(steps))
        return
    if args.table is not None:
        merged = {}
        for path in args.table:
            with open(path) as f:
                for backend, cells in json.load(f)["results"].items():
                    merged.setdefault(backend, {}).update(cells)
        print(markdown(merged, [b for b in BACKENDS if b in merged], NAMES))
        return
    vocab, steps = (20_000, 4) if args.quick else (500_000, args.steps)
    names = args.only or NAMES
    if "plain" not in names:
        names = ["plain"] + names
    results = {}
    if os.path.exists(args.output):
        with open(args.output) as f:
            results = json.load(f).get("results", {})
    load = os.getloadavg()
    for backend in args.backends:
        for name in names:
            if name == "input_gp":
                result = "n/a"
            else:
                result = run_cell(backend, name, vocab, steps, args.timeout)
            results.setdefault(backend, {})[name] = result
            print(backend, name, result, flush=True)
            report = {
                "vocab": vocab,
                "steps": steps,
                "batch": [BATCH, LENGTH],
                "cpu_cores": os.cpu_count(),
                "load_average_at_start": load,
                "load_average_now": os.getloadavg(),
                "results": results,
            }
            os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
            with open(args.output, "w") as f:
                json.dump(report, f, indent=2)
    print(markdown(results, args.backends, NAMES))


if __name__ == "__main__":
    main()
