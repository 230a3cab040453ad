"""Tests for the multilabel prediction rule and metrics (logit > 0)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from keras_reg import losses, metrics
from keras_reg._compat import keras

ops = keras.ops

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(12, 5)).astype("float32")
LOGITS[0] = [-np.inf, 0.0, 1e-3, -1e-3, 7.0]  # -inf and the threshold itself
LABELS = (rng.random((12, 5)) < 0.4).astype("float32")
LABELS[1] = 0.0  # an empty label set


def test_prediction_rule_is_strictly_positive_logit():
    got = ops.convert_to_numpy(metrics.multilabel_predictions(LOGITS))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, (LOGITS > 0).astype(np.int32))
    np.testing.assert_array_equal(got[0], [0, 0, 1, 0, 1])


def test_probabilities_are_sigmoid_of_twice_the_logit():
    got = ops.convert_to_numpy(metrics.multilabel_probabilities([[0.0, 1.0, -2.0]]))
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-2 * np.array([[0, 1, -2.0]]))))


def test_exact_match_against_numpy():
    metric = metrics.MultilabelExactMatch()
    metric.update_state(LABELS[:7], LOGITS[:7])
    metric.update_state(LABELS[7:], LOGITS[7:])
    expected = np.mean(np.all((LOGITS > 0) == (LABELS > 0.5), axis=-1))
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    perfect = np.where(LABELS > 0, 3.0, -3.0)
    metric.reset_state()
    metric.update_state(LABELS, perfect)
    assert float(metric.result()) == 1.0


@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
def test_f1_against_sklearn(average):
    metric = metrics.MultilabelF1(average=average)
    metric.update_state(LABELS[:5], LOGITS[:5])
    metric.update_state(LABELS[5:], LOGITS[5:])
    expected = f1_score(LABELS, LOGITS > 0, average=average, zero_division=0)
    np.testing.assert_allclose(float(metric.result()), expected, atol=1e-5)


def test_f1_thresholds_soft_labels_at_one_half():
    soft = np.clip(LABELS * 0.8 + 0.1, 0, 1)  # 0 -> 0.1, 1 -> 0.9
    a, b = metrics.MultilabelF1(), metrics.MultilabelF1()
    a.update_state(soft, LOGITS)
    b.update_state(LABELS, LOGITS)
    assert float(a.result()) == float(b.result())


def test_metrics_serialise_and_work_in_fit():
    for metric in (
        metrics.MultilabelF1(average="macro"),
        metrics.MultilabelExactMatch(),
    ):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(metric)
        )
        assert type(restored) is type(metric)
        assert restored.get_config() == metric.get_config()
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x[:, :3] > 0).astype("float32")  # learnable: label i = sign of feature i
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.1),
        loss=losses.MultilabelCategoricalCrossentropy(),
        metrics=[metrics.MultilabelF1(), metrics.MultilabelExactMatch()],
    )
    model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    assert result["multilabel_f1"] > 0.9 and result["exact_match"] > 0.8


@pytest.mark.parametrize(
    "function", [metrics.multilabel_predictions, metrics.multilabel_probabilities]
)
@pytest.mark.parametrize("value", [None, "abc", [["a", "b"]], {"x": 1.0}])
def test_non_numeric_logits_are_a_type_error_naming_them(function, value):
    with pytest.raises(TypeError) as caught:
        function(value)
    message = str(caught.value)
    assert f"{function.__name__}() expects `logits`" in message
    assert f"logits={value!r} ({type(value).__name__})" in message


@pytest.mark.parametrize(
    "function", [metrics.multilabel_predictions, metrics.multilabel_probabilities]
)
def test_scalar_logits_lack_the_class_axis(function):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., num_classes\)"):
        function(1.5)


def test_integer_and_symbolic_logits_still_work():
    got = ops.convert_to_numpy(metrics.multilabel_probabilities([[0, 1]]))
    np.testing.assert_allclose(got, [[0.5, 1 / (1 + np.exp(-2.0))]], rtol=1e-6)
    inputs = keras.Input((3,))
    assert metrics.multilabel_predictions(inputs).shape == (None, 3)
