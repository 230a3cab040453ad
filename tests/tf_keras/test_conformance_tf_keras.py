"""The shared conformance suite (tests/conformance_suite.py) on tf_keras models.

Runs in its own process with TF_KERAS=1 and TF_USE_LEGACY_KERAS=1; every
regulariser the README lists for tf_keras (all of them; the input gradient
penalty on float inputs) passes the same checks as on Keras 3. Two replicas
against one device: tests/tf_keras/test_replicas_tf_keras.py.
"""

import os

import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tf_keras  # noqa: E402

from tests import conformance_suite as suite  # noqa: E402

TF_KERAS = suite.Framework(tf_keras)


@pytest.fixture(autouse=True)
def _fresh_tf_keras_state():
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.utils.set_random_seed(1234)
    yield
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.clear_session()


@pytest.mark.filterwarnings("ignore:.*unlabeled.*")
@pytest.mark.parametrize("name", suite.params("config", TF_KERAS))
def test_config_round_trip(name):
    suite.check_config_round_trip(TF_KERAS, name)


@pytest.mark.parametrize("name", suite.params("pickle", TF_KERAS))
def test_pickle_and_deepcopy(name):
    suite.check_pickle_and_deepcopy(TF_KERAS, name)


@pytest.mark.parametrize("name", suite.params("install", TF_KERAS))
def test_install_replace_remove(name):
    suite.check_install_replace_remove(TF_KERAS, name)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", suite.params("lr-zero", TF_KERAS))
def test_learning_rate_zero_keeps_every_weight_bit_identical(name, jit_compile):
    suite.check_lr_zero_keeps_every_weight(TF_KERAS, name, jit_compile)


@pytest.mark.parametrize("name", suite.params("nan", TF_KERAS, suite.PERTURBING))
def test_nan_batch_poisons_no_more_than_plain_keras(name):
    suite.check_nan_batch_like_plain(TF_KERAS, name)


@pytest.mark.parametrize("name", suite.params("nan-loss-scale", TF_KERAS))
def test_nan_batch_is_skipped_by_a_loss_scale_optimizer(name):
    suite.check_nan_batch_skipped_by_loss_scaling(TF_KERAS, name)


@pytest.mark.parametrize("name", suite.params("logs", TF_KERAS))
def test_logged_terms_appear_in_fit_and_not_in_evaluate(name):
    suite.check_logged_terms(TF_KERAS, name)


@pytest.mark.parametrize("name", suite.params("scope", TF_KERAS))
def test_scope_leaves_the_model_as_it_found_it(name):
    suite.check_scope(TF_KERAS, name)


@pytest.mark.parametrize("policy", sorted(suite.MIXED_TOLERANCE))
@pytest.mark.parametrize("name", suite.params("mixed", TF_KERAS))
def test_mixed_precision_moves_the_weights_like_float32(name, policy):
    suite.check_mixed_precision_like_float32(TF_KERAS, name, policy)


@pytest.mark.parametrize("name", suite.params("nan-mixed", TF_KERAS))
def test_mixed_float16_skips_a_non_finite_step(name):
    suite.check_nan_batch_skipped_by_loss_scaling(TF_KERAS, name, "mixed_float16")
