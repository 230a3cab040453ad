"""Runs the study one cached run at a time: a run is skipped when its file exists.

One run = one training of one model: (task, method, strength, seed). It writes
``<results>/<task>/<method>/<strength>/seed<k>.json`` holding the validation
accuracy (which picks the strength) and the test accuracy (which is
reported) of that one model, its seconds per epoch and the task's settings.
For each method the grid is run on seed 0 and the strength with the best
validation accuracy (the smaller on a tie: the grids are increasing) is then
run on the other seeds; seed 0's test accuracy at that strength is the same
run's. A cached file made under other settings is an error, not a silent mix.
"""

import json
import os
import time

import numpy as np

import keras_reg
from keras_reg._compat import keras
from study import data
from study.methods import METHODS

TASK_ORDER = ("digits", "digits-100", "sentiment", "sentiment-200")
# Seconds per epoch of plain training and each method's cost relative to it,
# for the estimate until the cache holds the method's own measured times
# (sentiment: docs/results.md's adversaries table, TF, 2 cores).
PLAIN_EPOCH = {
    "digits": 0.4,
    "digits-100": 0.4,
    "sentiment": 18.0,
    "sentiment-200": 18.0,
}
COST = {
    "plain": 1.0,
    "FGM": 1.8,
    "PGD": 3.1,
    "FreeLB": 2.3,
    "FreeFGM": 1.05,
    "gradient penalty": 2.5,
    "noise": 1.1,
    "R-Drop": 2.0,
    "SAM": 2.0,
    "AWP": 2.0,
    "VAT": 3.0,
}
SETUP_SECONDS = {"digits": 3.0, "sentiment": 15.0}  # build, trace, evaluate
# The encoder's MLM pre-training (8 epochs, ~300 s each measured on a loaded
# machine), when it is not cached yet.
PRETRAIN_SECONDS = 8 * 300.0


def slug(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def strength_slug(method, strength):
    if strength is None:
        return "default"
    if isinstance(strength, (list, tuple)):
        return "+".join(f"{s:g}" for s in strength)
    return f"{METHODS[method].strength}={strength:g}"


def result_path(root, task, method, strength, seed):
    return os.path.join(
        root, task, slug(method), strength_slug(method, strength), f"seed{seed}.json"
    )


def read(path):
    with open(path) as f:
        return json.load(f)


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock and CPU seconds of each epoch (CPU: all of this process's threads).

    On a machine shared with other jobs the wall-clock time depends on the load;
    the CPU time much less, so the report compares methods by it.
    """

    def on_train_begin(self, logs=None):
        self.seconds, self.cpu_seconds = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start[0])
        self.cpu_seconds.append(time.process_time() - self.start[1])


class Study:
    """The schedule of runs over the tasks, methods, grids and seeds.

    Args:
        root: The results directory (one JSON file per run).
        seeds: Seeds per method at its chosen strength.
        smoke: Tiny data and settings; two grid values per method.
        tasks, methods: What to run (default: everything).
    """

    def __init__(self, root, seeds=5, smoke=False, tasks=None, methods=None):
        self.root, self.seeds, self.smoke = root, seeds, smoke
        self.tasks = tasks or TASK_ORDER
        self.methods = methods or list(METHODS)
        self._loaded = {}

    # -- what to run ---------------------------------------------------------

    def grid(self, method, task):
        values = METHODS[method].grid(task)
        return values[:2] if self.smoke else values

    def planned(self, task):
        """The methods run on ``task``, in order, with their availability."""
        return [m for m in self.methods if task in METHODS[m].tasks]

    def chosen(self, task, method):
        """The strength picked on validation (seed 0), or None if not run yet."""
        entry = METHODS[method]
        if entry.parts:
            parts = [self.chosen(task, p) for p in entry.parts]
            return None if any(p is None for p in parts) else tuple(parts)
        values = self.grid(method, task)
        if not values:
            return "default"
        scores = []
        for value in values:
            path = result_path(self.root, task, method, value, 0)
            if not os.path.exists(path):
                return None
            scores.append(read(path)["val_accuracy"])
        return values[int(np.argmax(scores))]  # the first best: the smaller

    def runs(self, task, method):
        """Yields (strength, seed) of the runs that can be scheduled now."""
        values = self.grid(method, task)
        if not METHODS[method].parts:
            for value in values:
                yield value, 0
        strength = self.chosen(task, method)
        if strength is None:
            return
        strength = None if strength == "default" else strength
        for seed in range(self.seeds):
            yield strength, seed

    # -- running -------------------------------------------------------------

    def settings(self, task):
        return data.settings_for(task, self.smoke)

    def task(self, name, seed):
        key = (name, seed)
        if key not in self._loaded:
            self._loaded = {key: data.load_task(name, seed, self.smoke)}
        return self._loaded[key]

    def run(self, task_name, method, strength, seed):
        """Trains one model (unless cached); returns its result."""
        path = result_path(self.root, task_name, method, strength, seed)
        settings = self.settings(task_name)
        if os.path.exists(path):
            result = read(path)
            if result["settings"] != settings:
                raise ValueError(
                    f"{path} was made with settings {result['settings']}, "
                    f"not {settings}: delete it or pass another --results-dir."
                )
            return result
        task = self.task(task_name, seed)
        entry = METHODS[method]
        keras.utils.set_random_seed(seed)  # the same init and order per seed
        model = task.build()
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=keras.optimizers.Adam(settings["learning_rate"]),
            metrics=["accuracy"],
            run_eagerly=settings.get("run_eagerly", False),
        )
        if entry.parts:
            regularizer = entry.make_all(strength, task, seed)
        else:
            regularizer = entry.make(strength, task, seed)
        if regularizer is not None:
            keras_reg.install_regularizer(model, regularizer)
        timer = EpochTimer()
        x, y = task.train
        model.fit(
            x,
            y,
            batch_size=settings["batch_size"],
            epochs=settings["epochs"],
            verbose=0,
            callbacks=[timer],
        )
        if regularizer is not None:
            keras_reg.remove_regularization(model)
        accuracy = {
            split: float(
                model.evaluate(*getattr(task, split), batch_size=256, verbose=0)[1]
            )
            for split in ("val", "test")
        }
        result = {
            "task": task_name,
            "method": method,
            "parts": list(entry.parts),
            "strength_name": entry.strength,
            "strength": list(strength) if isinstance(strength, tuple) else strength,
            "seed": seed,
            "val_accuracy": accuracy["val"],
            "test_accuracy": accuracy["test"],
            "seconds_per_epoch": float(np.median(timer.seconds)),
            "cpu_seconds_per_epoch": float(np.median(timer.cpu_seconds)),
            "epoch_seconds": [round(s, 3) for s in timer.seconds],
            "epoch_cpu_seconds": [round(s, 3) for s in timer.cpu_seconds],
            "settings": settings,
            "description": task.description,
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".tmp", path)  # never a half-written result
        return result

    def execute(self, log=print):
        """Runs everything not cached yet, task by task, method by method."""
        for task in self.tasks:
            for method in self.planned(task):
                if not METHODS[method].available():
                    log(f"{task}: {method} skipped (needs a feature not in keras_reg)")
                    continue
                # Two passes: the grid (seed 0), then the seeds at the strength
                # it chose (`runs` only sees a choice once the grid is cached).
                for _ in range(2):
                    for strength, seed in list(self.runs(task, method)):
                        path = result_path(self.root, task, method, strength, seed)
                        cached = os.path.exists(path)
                        result = self.run(task, method, strength, seed)
                        if not cached:
                            log(
                                f"{task} {method} {strength_slug(method, strength)} "
                                f"seed {seed}: val {result['val_accuracy']:.4f} "
                                f"test {result['test_accuracy']:.4f} "
                                f"({result['seconds_per_epoch']:.2f} s/epoch)"
                            )

    # -- estimate ------------------------------------------------------------

    def estimate(self):
        """(runs left, seconds left): measured s/epoch where cached, else COST."""
        runs, seconds = 0, 0.0
        if (
            not self.smoke
            and any(t.startswith("sentiment") for t in self.tasks)
            and not data.encoder_cached()
        ):
            seconds += PRETRAIN_SECONDS
        for task in self.tasks:
            epochs = self.settings(task)["epochs"]
            for method in self.planned(task):
                entry = METHODS[method]
                if not entry.available():
                    continue
                count = self.seeds + (
                    0 if entry.parts else len(self.grid(method, task))
                )
                if entry.grid(task):
                    count -= 1  # seed 0 at the chosen strength is a grid run
                done = self.cached(task, method)
                left = max(count - len(done), 0)
                if done:
                    per_epoch = np.mean([r["seconds_per_epoch"] for r in done])
                else:
                    cost = sum(COST.get(p, 2.0) for p in entry.parts) or COST.get(
                        method, 2.0
                    )
                    per_epoch = PLAIN_EPOCH[task] * cost
                setup = SETUP_SECONDS[task.split("-")[0]]
                runs += left
                seconds += left * (per_epoch * epochs + setup)
        return runs, seconds

    def cached(self, task, method):
        """Every cached result of ``method`` on ``task``."""
        folder = os.path.join(self.root, task, slug(method))
        found = []
        for base, _, files in os.walk(folder):
            found += [read(os.path.join(base, f)) for f in files if f.endswith(".json")]
        return found
