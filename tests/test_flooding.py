"""Tests for keras_reg.losses.Flooding (|L - b| + b on the batch loss)."""

import numpy as np
import pytest

from keras_reg import losses
from keras_reg._compat import keras

ops = keras.ops

X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.5], [2.0, 1.0]], "float32")
Y = np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
W0 = np.array([[0.3], [-0.2]], "float32")


def mse_and_gradient(w):
    """Batch MSE of the linear model X @ w and its gradient, in float64."""
    residual = X.astype(np.float64) @ w - Y
    return np.mean(residual**2), 2.0 * X.T @ residual / len(X)


def one_sgd_step(loss):
    """Returns the kernel after one SGD(lr=1) step of a compiled linear model."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(W0)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=loss)
    model.train_on_batch(X, Y)
    return model.layers[0].kernel.numpy()


def test_value_is_absolute_distance_to_level_plus_level():
    value, _ = mse_and_gradient(W0)
    prediction = X @ W0
    for level in (0.0, value / 2, value * 2):
        got = losses.Flooding("mse", level)(Y, prediction)
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), abs(value - level) + level, rtol=1e-6
        )


def test_gradient_flips_sign_below_the_level():
    value, gradient = mse_and_gradient(W0)
    plain = one_sgd_step("mse")
    np.testing.assert_allclose(plain, W0 - gradient, rtol=1e-5)  # sanity
    above = one_sgd_step(losses.Flooding("mse", level=value / 2))
    np.testing.assert_allclose(above, W0 - gradient, rtol=1e-5)  # descent
    below = one_sgd_step(losses.Flooding("mse", level=value * 2))
    np.testing.assert_allclose(below, W0 + gradient, rtol=1e-5)  # ascent


def test_sample_weights_are_applied_before_flooding():
    prediction = X @ W0
    weights = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    per_example = np.mean((prediction - Y) ** 2, axis=-1)
    weighted = np.sum(weights * per_example) / len(X)  # sum_over_batch_size
    level = 2.0 * weighted
    got = losses.Flooding(keras.losses.MeanSquaredError(), level)(
        Y, prediction, sample_weight=weights
    )
    np.testing.assert_allclose(ops.convert_to_numpy(got), level + level - weighted)


def test_accepts_callables_and_loss_instances():
    prediction = X @ W0
    value, _ = mse_and_gradient(W0)

    def squared_error(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred), axis=-1)

    for loss in (squared_error, keras.losses.MeanSquaredError(), "mean_squared_error"):
        got = losses.Flooding(loss, 10.0)(Y, prediction)
        np.testing.assert_allclose(ops.convert_to_numpy(got), 20.0 - value, rtol=1e-6)


def test_rank_one_labels_do_not_broadcast_against_column_predictions():
    prediction = X @ W0  # (4, 1)
    value, _ = mse_and_gradient(W0)
    got = losses.Flooding("mse", 0.0)(Y[:, 0], prediction)  # labels (4,)
    np.testing.assert_allclose(ops.convert_to_numpy(got), value, rtol=1e-6)


@pytest.mark.parametrize("level", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_rejects_bad_levels(level):
    with pytest.raises(ValueError, match="level"):
        losses.Flooding("mse", level)


def test_rejects_non_losses_and_unreduced_losses():
    with pytest.raises(ValueError, match="Received: loss=42"):
        losses.Flooding(42, 0.1)
    with pytest.raises(ValueError, match="keras.losses.get"):
        losses.Flooding("no_such_loss", 0.1)
    with pytest.raises(ValueError, match="reduction"):
        losses.Flooding(keras.losses.MeanSquaredError(reduction=None), 0.1)


def test_config_round_trip():
    for inner in ("mse", losses.MultilabelCategoricalCrossentropy()):
        flood = losses.Flooding(inner, 0.25, name="flood")
        config = keras.saving.serialize_keras_object(flood)
        restored = keras.saving.deserialize_keras_object(config)
        assert isinstance(restored, losses.Flooding)
        assert restored.level == 0.25 and restored.name == "flood"
        assert restored.get_config() == flood.get_config()
