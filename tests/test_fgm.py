"""FGM adversarial training: closed-form steps, exactness, install/remove, errors."""

import warnings

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import fgm_reference, models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
# jit_compile=True: XLA on TensorFlow and JAX; torch.compile is not supported.
JIT_BACKENDS = pytest.mark.backends(
    "tensorflow", "jax", reason="jit_compile=True means torch.compile on torch"
)

STYLES = ["sequential", "functional", "subclassed"]
LR, EPSILON = 0.5, 0.7


@pytest.mark.parametrize("style", STYLES)
def test_one_step_matches_numpy(style, rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled(style)
    models.set_weights(model, E, W, b)
    assert keras_reg.adversarial_training(model, "emb", epsilon=EPSILON) is model
    models.fit_one_batch(model, x, y, w)
    expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    models.assert_weights(model, expected)


@pytest.mark.parametrize(
    "options",
    [
        {"add_clean_loss": True},
        {"l2": 0.05},  # the regulariser's gradient makes dL/dE dense
        pytest.param({"jit_compile": True}, marks=JIT_BACKENDS),  # TF: dense path
        {"jit_compile": False},
        {"run_eagerly": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_variants_match_numpy(options, rng):
    l2 = options.get("l2", 0.0)
    add_clean = options.get("add_clean_loss", False)
    compile_kwargs = {
        k: v for k, v in options.items() if k in ("jit_compile", "run_eagerly")
    }
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional", l2=l2, **compile_kwargs)
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(
        model, "emb", epsilon=EPSILON, add_clean_loss=add_clean
    )
    models.fit_one_batch(model, x, y, w)
    expected = fgm_reference.fgm_sgd_step(
        E, W, b, x, y, LR, EPSILON, w, l2=l2, add_clean=add_clean
    )
    models.assert_weights(model, expected)


def test_three_steps_match_numpy(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, w, epochs=3)
    for _ in range(3):
        E, W, b = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    models.assert_weights(model, (E, W, b))


class _EmbeddingProbe(keras.callbacks.Callback):
    """Copies the embedding matrix after every batch.

    Reads through ``self.model``, which syncs JAX's training state into the
    variables first.
    """

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(models.get_weights(self.model)[0])


@pytest.mark.parametrize(
    "jit_compile, l2",
    [
        (False, 0.0),
        pytest.param(True, 0.0, marks=JIT_BACKENDS),
        (False, 1e-3),
        pytest.param(True, 1e-3, marks=JIT_BACKENDS),
    ],
    ids=["graph-lookup", "xla-lookup", "graph-in-place", "xla-in-place"],
)
def test_embedding_is_restored_bit_for_bit(jit_compile, l2, rng):
    """With a learning rate of 0, no step may change the embedding, not by an ulp.

    An embeddings regulariser makes FGM perturb the variable in place on
    TensorFlow (its value enters the loss), the path where a restore by
    subtraction would drift; on JAX and PyTorch it substitutes ``E + delta``.
    """
    E, W, b = models.initial_weights(rng)
    E = (E * 0.02).astype("float32")  # BERT-like scale: w + d - d != w here
    x, y, w = models.batch(rng)
    model = models.compiled("functional", lr=0.0, l2=l2, jit_compile=jit_compile)
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=3.0)
    probe = _EmbeddingProbe()
    models.fit_one_batch(model, x, y, w, epochs=5, callbacks=[probe])
    assert len(probe.seen) == 5
    for matrix in probe.seen:
        np.testing.assert_array_equal(matrix, E)
    # The subtraction restore really would have drifted for such values:
    delta = rng.normal(size=E.shape).astype("float32") * 0.3
    assert np.any((E + delta) - delta != E)


def test_frozen_embedding_is_perturbed_but_never_changed(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.build("functional")
    model.get_layer("emb").trainable = False
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, w, epochs=3)
    np.testing.assert_array_equal(models.get_weights(model)[0], E)
    assert not np.allclose(models.get_weights(model)[1], W)


@pytest.mark.backends("torch", reason="PyTorch's .grad")
@pytest.mark.parametrize("add_clean", [False, True], ids=["adversarial", "add-clean"])
def test_torch_grad_holds_only_the_gradient_of_the_optimized_loss(add_clean, rng):
    """The clean-loss gradient FGM takes for its direction never reaches .grad."""
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(
        model, "emb", epsilon=EPSILON, add_clean_loss=add_clean
    )
    models.fit_one_batch(model, x, y, w)
    _, g, _, _ = fgm_reference.loss_and_gradients(E, W, b, x, y, w)
    delta = EPSILON * g / np.linalg.norm(g)
    expected = fgm_reference.loss_and_gradients(E + delta, W, b, x, y, w)[1:]
    if add_clean:
        clean = fgm_reference.loss_and_gradients(E, W, b, x, y, w)[1:]
        expected = [a + c for a, c in zip(expected, clean)]
    emb, out = model.get_layer("emb"), model.get_layer("out")
    grads = [v.value.grad for v in (emb.embeddings, out.kernel, out.bias)]
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=2e-6)


@pytest.mark.backends("torch", reason="PyTorch's requires_grad")
def test_torch_frozen_embedding_stays_frozen(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.build("functional")
    model.get_layer("emb").trainable = False
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, w)
    tensor = model.get_layer("emb").embeddings.value
    assert not tensor.requires_grad
    assert tensor.grad is None


def test_remove_restores_the_plain_step(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("sequential")
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, w)  # traces and caches the FGM train function
    E1, W1, b1 = models.get_weights(model)
    assert keras_reg.remove_regularization(model) is model
    assert keras_reg.installed_regularizer(model) is None
    assert "train_step" not in vars(model) and "compute_loss" not in vars(model)
    models.fit_one_batch(model, x, y, w)
    models.assert_weights(model, fgm_reference.plain_sgd_step(E1, W1, b1, x, y, LR, w))


def test_applying_again_replaces_and_warns(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=5.0)
    with pytest.warns(UserWarning, match="Replacing FGM"):
        keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, w)
    expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    models.assert_weights(model, expected)
    keras_reg.remove_regularization(model)
    assert "train_step" not in vars(model)


def test_callback_installs_for_one_fit_only(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    models.fit_one_batch(model, x, y, w, epochs=0)  # a train function is already cached
    scope = keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb", EPSILON))
    models.fit_one_batch(model, x, y, w, callbacks=[scope])
    E, W, b = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    models.assert_weights(model, (E, W, b))
    assert keras_reg.installed_regularizer(model) is None
    models.fit_one_batch(model, x, y, w)
    models.assert_weights(model, fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w))


def test_evaluate_and_predict_are_unchanged(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional")
    models.set_weights(model, E, W, b)
    plain_loss = model.evaluate(x, y, sample_weight=w, verbose=0)
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    assert model.evaluate(x, y, sample_weight=w, verbose=0) == pytest.approx(plain_loss)
    expected_loss = fgm_reference.loss_and_gradients(E, W, b, x, y, w)[0]
    assert plain_loss == pytest.approx(expected_loss, rel=1e-5)


def test_reported_loss_is_the_adversarial_loss(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    model = models.compiled("functional", lr=0.0)
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    history = model.fit(x, y, sample_weight=w, batch_size=len(x), verbose=0)
    _, g, _, _ = fgm_reference.loss_and_gradients(E, W, b, x, y, w)
    delta = EPSILON * g / np.linalg.norm(g)
    expected = fgm_reference.loss_and_gradients(E + delta, W, b, x, y, w)[0]
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_mixed_precision_step_is_close_to_float32(rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    keras.config.set_dtype_policy("mixed_float16")
    model = models.build("functional")
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(LR), initial_scale=64.0
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer)
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, w)
    expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON, w)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_dropout_model_trains_with_finite_loss(rng):
    x, y, w = models.batch(rng, size=32)
    model = models.compiled("subclassed", dropout=0.5, metrics=["accuracy"])
    keras_reg.adversarial_training(model, "emb")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert set(history.history) == {"loss", "accuracy", "adversarial_loss"}


# ---- errors: each names the bad value and the fix ------------------------------


def test_unknown_layer_lists_embedding_layers():
    model = models.compiled("functional")
    with pytest.raises(ValueError, match=r"No layer named 'Embedding-Token'.*'emb'"):
        keras_reg.adversarial_training(model, "Embedding-Token")


def test_layer_without_embedding_matrix():
    model = models.compiled("functional")
    with pytest.raises(
        ValueError, match=r"'out' \(Dense\) has no embedding matrix.*'emb'"
    ):
        keras_reg.adversarial_training(model, "out")


def test_model_not_compiled():
    model = models.build("functional")
    with pytest.raises(ValueError, match="is not compiled.*model.compile"):
        keras_reg.adversarial_training(model, "emb")
    assert "train_step" not in vars(model)


def test_unknown_option_suggests_the_right_one():
    model = models.compiled("functional")
    with pytest.raises(
        ValueError, match="unknown option 'epsion'.*did you mean 'epsilon'"
    ):
        keras_reg.adversarial_training(model, "emb", epsion=1.0)


@pytest.mark.parametrize("epsilon", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_non_positive_epsilon(epsilon):
    model = models.compiled("functional")
    with pytest.raises(
        ValueError, match=r"`epsilon` must be a positive number, received"
    ):
        keras_reg.adversarial_training(model, "emb", epsilon=epsilon)
    assert keras_reg.installed_regularizer(model) is None


def test_fgm_config_round_trip():
    fgm = keras_reg.FGM("Embedding-Token", epsilon=0.5, add_clean_loss=True)
    config = keras.saving.serialize_keras_object(fgm)
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, keras_reg.FGM)
    assert clone.get_config() == fgm.get_config()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repr(clone) == repr(fgm)
