"""Labels outside the range a loss reads are refused where their values are known."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
LOSSES = {
    "function": keras_reg.losses.multilabel_categorical_crossentropy,
    "class": keras_reg.losses.MultilabelCategoricalCrossentropy(),
}
LOGITS = np.array([[1.0, -2.0, 0.5], [0.3, 0.1, -0.4]], "float32")


@pytest.mark.parametrize("bad", [2.0, -1.0])
@pytest.mark.parametrize("form", sorted(LOSSES))
def test_a_label_outside_zero_one_is_refused_eagerly(form, bad):
    labels = np.array([[0.0, 1.0, bad], [1.0, 0.0, 0.0]], "float32")
    with pytest.raises(ValueError, match=r"expects labels in \[0, 1\].*1 value"):
        LOSSES[form](labels, LOGITS)


@pytest.mark.parametrize("form", sorted(LOSSES))
def test_soft_labels_in_range_are_accepted(form):
    labels = np.array([[0.0, 1.0, 0.25], [1.0, 0.0, 0.0]], "float32")
    loss = keras.ops.convert_to_numpy(LOSSES[form](labels, LOGITS))
    assert np.isfinite(loss).all()


def test_fit_run_eagerly_refuses_labels_outside_zero_one():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(
        optimizer="sgd",
        loss=keras_reg.losses.MultilabelCategoricalCrossentropy(),
        run_eagerly=True,
    )
    labels = np.array([[0, 2, 1], [1, 0, 0]], "float32")
    with pytest.raises(ValueError, match=r"expects labels in \[0, 1\]"):
        model.fit(np.ones((2, 4), "float32"), labels, verbose=0)
