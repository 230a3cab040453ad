"""A compiled Keras 3 model using each keras_reg loss survives save/load_model."""

import numpy as np
import pytest

from keras_reg import losses, metrics
from keras_reg._compat import keras

rng = np.random.default_rng(0)
X = rng.normal(size=(16, 5)).astype("float32")
Y_DENSE = (rng.random((16, 6)) < 0.3).astype("float32")
Y_SPARSE = np.stack(  # positives as indices, 0 = padding (mask_zero=True)
    [rng.choice(np.arange(1, 6), 2, replace=False) for _ in range(16)]
).astype("int32")
Y_SPARSE[::3, 1] = 0


CASES = {
    "function": (lambda: losses.multilabel_categorical_crossentropy, Y_DENSE),
    "class": (lambda: losses.MultilabelCategoricalCrossentropy(), Y_DENSE),
    "sparse_function": (
        lambda: losses.sparse_multilabel_categorical_crossentropy,
        Y_SPARSE[:, :1],  # mask_zero=False: every index is a positive
    ),
    "sparse_class": (
        lambda: losses.SparseMultilabelCategoricalCrossentropy(mask_zero=True),
        Y_SPARSE,
    ),
    "flooding_string": (lambda: losses.Flooding("mse", 0.5), Y_DENSE),
    "flooding_ours": (
        lambda: losses.Flooding(losses.multilabel_categorical_crossentropy, 3.0),
        Y_DENSE,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_model_survives_save_and_load(case, tmp_path):
    make_loss, y = CASES[case]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=make_loss(),
        metrics=[metrics.MultilabelF1()] if y is Y_DENSE else None,
    )
    model.fit(X, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects needed
    before = model.evaluate(X, y, verbose=0, return_dict=True)
    after = loaded.evaluate(X, y, verbose=0, return_dict=True)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6)
    loaded.fit(X, y, batch_size=8, epochs=1, verbose=0)  # still trains


def test_training_lowers_the_multilabel_loss():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=CASES["class"][0]())
    history = model.fit(X, Y_DENSE, batch_size=16, epochs=30, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
