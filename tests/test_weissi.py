"""WEISSI: invariance to weight scale shifting, gradient, the model-level helper.

Runs once per Keras 3 backend.
"""

import numpy as np
import pytest

from keras_reg import regularizers
from keras_reg._compat import keras

ops = keras.ops
WEIGHT, DIRECTION = 0.3, 0.05


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def chain(weight=WEIGHT, direction_l1=DIRECTION):
    """Conv-ReLU, max-pool, Dense-ReLU, linear Dense: positively homogeneous."""
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    names = regularizers.apply_weissi(model, weight, direction_l1=direction_l1)
    assert names == ["conv", "hidden", "logits"]
    return model


def penalty(model):
    return float(numpy(ops.sum(ops.stack(model.losses))))


def kernels(model):
    return [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]


def rescale(model, gammas):
    """W_l -> gamma_l W_l and b_l -> (gamma_1 ... gamma_l) b_l."""
    running = 1.0
    for layer, gamma in zip([m for m in model.layers if hasattr(m, "kernel")], gammas):
        running *= gamma
        layer.kernel.assign(numpy(layer.kernel).astype("float32") * gamma)
        layer.bias.assign(numpy(layer.bias).astype("float32") * running)


def l2(model):
    return sum(np.sum(numpy(k) ** 2) for k in kernels(model))


def test_invariant_to_scale_shifts_with_product_one(rng):
    model = chain()
    for layer in model.layers:  # nonzero biases, so their rescaling matters
        if hasattr(layer, "bias"):
            layer.bias.assign(rng.normal(scale=0.1, size=layer.bias.shape))
    x = rng.normal(size=(5, 6, 6, 1)).astype("float32")
    before = numpy(model(x)), penalty(model), l2(model)
    rescale(model, [4.0, 0.125, 2.0])  # product 1
    after = numpy(model(x)), penalty(model), l2(model)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-5)  # f same
    assert after[1] == pytest.approx(before[1], abs=1e-5)  # WEISSI same
    assert abs(after[2] - before[2]) > 0.5 * before[2]  # L2 is not


def test_a_common_scale_still_shrinks_like_l2(rng):
    model = chain()
    x = rng.normal(size=(5, 6, 6, 1)).astype("float32")
    before_out, before = numpy(model(x)), penalty(model)
    rescale(model, [0.5, 0.5, 0.5])
    # Three layers: the log term drops by 3 * weight * log 2, the direction
    # term is unchanged; the function is scaled by 1/8 (zero biases here).
    assert penalty(model) == pytest.approx(before - 3 * WEIGHT * np.log(2), abs=1e-5)
    np.testing.assert_allclose(numpy(model(x)), before_out / 8, rtol=1e-4, atol=1e-6)


def test_model_value_is_log_of_the_product_of_norms():
    model = chain()
    norms = [np.linalg.norm(numpy(k)) for k in kernels(model)]
    directions = sum(np.abs(numpy(k)).sum() / n for k, n in zip(kernels(model), norms))
    expected = WEIGHT * np.log(np.prod(norms)) + DIRECTION * directions
    assert penalty(model) == pytest.approx(expected, rel=1e-5)
    total = regularizers.weissi(kernels(model), WEIGHT, DIRECTION)
    assert float(numpy(total)) == pytest.approx(expected, rel=1e-5)


def test_gradient_matches_finite_differences_and_the_closed_form(rng):
    w = rng.normal(size=(5, 4)).astype("float32")
    regularizer = regularizers.WEISSI(WEIGHT, direction_l1=DIRECTION)
    dense = keras.layers.Dense(4, use_bias=False, kernel_regularizer=regularizer)
    model = keras.Sequential([keras.Input((5,)), dense])
    model.compile(
        loss=lambda t, p: 0.0 * ops.sum(p), optimizer=keras.optimizers.SGD(1.0)
    )
    dense.kernel.assign(w)
    model.train_on_batch(np.zeros((2, 5), "float32"), np.zeros((2, 4), "float32"))
    gradient = w - numpy(dense.kernel)  # what training applied (SGD, lr 1)

    h, numeric = 1e-2, np.zeros(w.shape)
    for index in np.ndindex(*w.shape):
        step = np.zeros(w.shape, "float32")
        step[index] = h
        plus = float(numpy(regularizer(w + step)))
        minus = float(numpy(regularizer(w - step)))
        numeric[index] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(gradient, numeric, atol=2e-3 * np.abs(numeric).max())

    w64 = w.astype(np.float64)
    norm = np.linalg.norm(w64)
    closed = WEIGHT * w64 / norm**2 + DIRECTION * (
        np.sign(w64) / norm - np.abs(w64).sum() * w64 / norm**3
    )
    np.testing.assert_allclose(gradient, closed, rtol=1e-4, atol=1e-6)


def test_training_a_tiny_model_lowers_the_product_of_norms(rng):
    x = rng.normal(size=(64, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=64)
    log_products = {}
    for name, weight in (("plain", 0.0), ("weissi", 0.2)):
        keras.utils.set_random_seed(0)
        model = chain(weight=weight, direction_l1=0.0)
        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            optimizer=keras.optimizers.SGD(0.1),
        )
        history = model.fit(x, y, batch_size=32, epochs=10, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        log_products[name] = sum(
            np.log(np.linalg.norm(numpy(k))) for k in kernels(model)
        )
    assert log_products["weissi"] < log_products["plain"] - 0.1, log_products


def test_apply_weissi_refuses_a_second_kernel_regularizer_and_empty_models():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(1e-3)),
        ]
    )
    with pytest.raises(ValueError, match="already have a kernel regulariser"):
        regularizers.apply_weissi(model)
    empty = keras.Sequential([keras.Input((3,)), keras.layers.ReLU()])
    with pytest.raises(ValueError, match="no layer with a kernel"):
        regularizers.apply_weissi(empty)
    with pytest.raises(ValueError, match="direction_l1=-1"):
        regularizers.WEISSI(direction_l1=-1)


def test_round_trip_through_save_and_load_model(tmp_path, rng):
    model = chain()
    model.compile(loss="mse", optimizer="sgd")
    x = rng.normal(size=(4, 6, 6, 1)).astype("float32")
    path = str(tmp_path / "weissi.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    for layer in loaded.layers:
        if hasattr(layer, "kernel"):
            assert isinstance(layer.kernel_regularizer, regularizers.WEISSI)
            assert layer.kernel_regularizer.get_config() == {
                "weight": WEIGHT,
                "direction_l1": DIRECTION,
            }
    assert penalty(loaded) == pytest.approx(penalty(model), rel=1e-6)
    np.testing.assert_allclose(numpy(loaded(x)), numpy(model(x)), rtol=1e-6)


class _Block(keras.layers.Layer):
    """A transformer-like block: attention (EinsumDense) and a feed-forward Dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(2, 3)
        self.feed_forward = [keras.layers.Dense(5), keras.layers.Dense(4)]

    def call(self, x):
        h = x + self.attention(x, x)
        for layer in self.feed_forward:
            h = layer(h)
        return h


def _nested_model():
    """A functional model wrapping a sub-model of custom blocks, as keras-hub does."""
    inputs = keras.Input((3, 4))
    backbone = keras.Model(inputs, _Block()(_Block()(inputs)), name="backbone")
    outer_inputs = keras.Input((3, 4))
    h = keras.layers.GlobalAveragePooling1D()(backbone(outer_inputs))
    return keras.Model(outer_inputs, keras.layers.Dense(2, name="logits")(h))


def test_apply_weissi_reaches_the_kernels_inside_custom_layers():
    model = _nested_model()
    all_kernels = [
        v for v in model.weights if v.path.split("/")[-1] == "kernel"
    ]  # 2 blocks x (4 attention + 2 feed-forward) + logits
    assert len(all_kernels) == 13
    with pytest.warns(UserWarning, match=r"_block.*load_model.*apply_weissi"):
        names = regularizers.apply_weissi(model, weight=WEIGHT)
    assert len(names) == 13
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    model(x)
    want = sum(
        WEIGHT * np.log(np.linalg.norm(numpy(v).astype(np.float64)))
        for v in all_kernels
    )
    assert len(model.losses) == 13
    assert penalty(model) == pytest.approx(want, rel=1e-5)


def test_apply_weissi_on_a_keras_hub_classifier():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=20,
        num_layers=2,
        num_heads=2,
        hidden_dim=4,
        intermediate_dim=8,
        max_sequence_length=6,
    )
    model = keras_hub.models.BertTextClassifier(backbone, 2, preprocessor=None)
    kernels_before = [v for v in model.weights if v.path.endswith("kernel")]
    with pytest.warns(UserWarning, match="load_model"):
        names = regularizers.apply_weissi(model)
    assert len(names) == len(kernels_before) == 14
