"""The tf_keras internals keras_reg reads, checked on the installed tf_keras.

The tf_keras counterpart of tests/test_keras_internals.py (own process:
TF_KERAS=1): each tf_keras read of `keras_reg.backend.keras_internals` on a
small compiled tf_keras model, and the error a missing one raises.
"""

import os

import numpy as np
import pytest

if os.environ.get("TF_KERAS") != "1":
    pytest.skip("tf_keras tests run in their own process", allow_module_level=True)

import bert4keras.models  # noqa: E402, F401
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from keras_reg.backend import keras_internals as internals  # noqa: E402

VERSION = f"tf_keras {tf_keras.__version__}"


def _require(obj, attribute):
    assert hasattr(obj, attribute), (
        f"{type(obj).__name__}.{attribute} is gone in {VERSION}: "
        "keras_reg.backend.keras_internals reads it"
    )


def _two_outputs():
    inputs = tf_keras.Input((3,))
    hidden = tf_keras.layers.Dense(4, name="shared")(inputs)
    first = tf_keras.layers.Dense(2, name="a")(hidden)
    second = tf_keras.layers.Dense(1, name="b")(hidden)
    model = tf_keras.Model(inputs, [first, second])
    model.compile(
        optimizer="sgd",
        loss=[
            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "mse",
        ],
        loss_weights=[2.0, 1.0],
    )
    return model


def _fit(model):
    x = np.ones((4, 3), "float32")
    model.fit(x, [np.array([0, 1, 0, 1]), np.ones((4, 1), "float32")], verbose=0)


def test_metric_list_is_what_model_metrics_reads():
    model = _two_outputs()
    _fit(model)
    metrics = internals.tf_keras_metric_list(model)
    probe = tf_keras.metrics.Mean(name="probe")
    metrics.append(probe)
    assert any(m is probe for m in model.metrics)
    assert not any(w is probe.variables[0] for w in model.weights)
    metrics[:] = [m for m in metrics if m is not probe]
    assert not any(m is probe for m in model.metrics)


def test_total_loss_tracker_is_the_logged_loss():
    model = _two_outputs()
    _fit(model)
    tracker = internals.tf_keras_total_loss_tracker(model)
    assert tracker is model.compiled_loss.metrics[0]
    assert tracker.name == "loss"
    assert internals.tf_keras_total_loss_tracker(tf_keras.Sequential()) is None


def test_loss_table_has_one_row_per_output():
    model = _two_outputs()
    _fit(model)
    names, losses, weights, trackers = internals.tf_keras_loss_table(
        model.compiled_loss
    )
    assert list(names) == ["a", "b"]
    assert len(losses) == 2 and all(loss is not None for loss in losses)
    assert list(weights) == [2.0, 1.0]
    assert [t.name for t in trackers] == ["a_loss", "b_loss"]


def test_sum_added_losses_and_scale_for_distribution():
    total = internals.tf_keras_sum_added_losses(
        [tf.constant(1.0), tf.constant(2.0, tf.float64)]
    )
    assert float(total) == 3.0
    scaled = internals.tf_keras_scale_loss_for_distribution(tf.constant(2.5))
    assert float(scaled) == 2.5


def test_sublayers_inbound_inputs_and_loss_options():
    ids = tf_keras.Input((5,), dtype="int32")
    embedding = tf_keras.layers.Embedding(10, 4, name="emb")
    inner = tf_keras.Sequential([tf_keras.layers.Dense(1, name="deep")], name="inner")
    pooled = tf_keras.layers.GlobalAveragePooling1D()(embedding(ids))
    model = tf_keras.Model(ids, inner(pooled))
    _require(model, "_flatten_layers")
    names = {layer.name for layer in internals.sublayers(model)}
    assert {"emb", "inner", "deep"} <= names
    assert "deep" not in {x.name for x in internals.sublayers(model, recursive=False)}
    _require(embedding, "_inbound_nodes")
    assert any(t is model.inputs[0] for t in internals.inbound_input_tensors(embedding))
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _require(loss, "_fn_kwargs")
    assert internals.loss_function_options(loss)["from_logits"] is True


def test_missing_attribute_names_it_and_the_tf_keras_version(monkeypatch):
    model = _two_outputs()
    _fit(model)
    monkeypatch.delattr(model.compiled_loss, "_total_loss_mean")
    with pytest.raises(RuntimeError) as error:
        internals.tf_keras_total_loss_tracker(model)
    message = str(error.value)
    assert "LossesContainer._total_loss_mean" in message and VERSION in message
    with pytest.raises(RuntimeError, match="Layer._metrics") as error:
        internals.tf_keras_metric_list(object())
    assert VERSION in str(error.value)
