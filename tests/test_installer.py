"""The installer on real-model situations: tied heads, custom steps, scopes, NaN,
logs, and the errors that name the bad value and the fix (issue 9)."""

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from tests import fgm_reference, models

pytestmark = pytest.mark.backends("tensorflow", "jax", "torch")
ops = keras.ops
LR, EPSILON = 0.5, 0.7


# ---- a tied output head reads E too: FGM must perturb it there as well ----------
class TiedHead(keras.layers.Layer):
    """logits = h @ E^T + b, with E the embedding layer's matrix."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(models.VOCAB,), initializer="zeros")

    def call(self, h):
        return ops.matmul(h, ops.transpose(self.embedding.embeddings)) + self.bias


def _tied_model():
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    embedding = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")
    h = keras.layers.GlobalAveragePooling1D()(embedding(inputs))
    probabilities = keras.layers.Softmax()(TiedHead(embedding, name="head")(h))
    model = keras.Model(inputs, probabilities)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(LR)
    )
    return model


def _tied_loss(E, b, x, y):
    E = np.asarray(E, np.float64)
    logits = E[x].mean(axis=1) @ E.T + b
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean()


def _numeric_gradient(f, value, h=1e-6):
    value = np.asarray(value, np.float64)
    gradient = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        step = np.zeros_like(value)
        step[index] = h
        gradient[index] = (f(value + step) - f(value - step)) / (2 * h)
    return gradient


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "jit"])
def test_fgm_perturbs_a_tied_head_too(jit_compile, rng):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile=True is torch.compile, refused on torch")
    E = rng.normal(size=(models.VOCAB, models.DIM))
    b = rng.normal(size=(models.VOCAB,)) * 0.1
    x, y, _ = models.batch(rng)
    model = _tied_model()
    model.jit_compile = jit_compile
    model.get_layer("emb").embeddings.assign(E.astype("float32"))
    model.get_layer("head").bias.assign(b.astype("float32"))
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    models.fit_one_batch(model, x, y, None)

    g = _numeric_gradient(lambda E_: _tied_loss(E_, b, x, y), E)
    delta = EPSILON * g / np.linalg.norm(g)
    dE = _numeric_gradient(lambda E_: _tied_loss(E_, b, x, y), E + delta)
    db = _numeric_gradient(lambda b_: _tied_loss(E + delta, b_, x, y), b)
    got_E = ops.convert_to_numpy(model.get_layer("emb").embeddings)
    got_b = ops.convert_to_numpy(model.get_layer("head").bias)
    np.testing.assert_allclose(got_E, E - LR * dE, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_b, b - LR * db, rtol=1e-4, atol=1e-5)


# ---- custom train steps ------------------------------------------------------
def _guide_step_model_class(call_compute_loss=True, metrics_loop=False):
    """A model whose train_step follows the Keras guide for the active backend.

    With ``metrics_loop`` it updates and returns ``self.metrics`` as the guide
    does: the loss tracker with the loss, every other metric with (y, y_pred).
    """
    backend = keras.backend.backend()

    def guide_logs(model, loss, y, y_pred):
        if not metrics_loop:
            return {"loss": loss}
        for metric in model.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in model.metrics}

    def stateless_guide_logs(model, metrics_vars, loss, y, y_pred):
        if not metrics_loop:
            return {"loss": loss}, metrics_vars
        new_vars, logs = [], {}
        for metric in model.metrics:
            own = metrics_vars[len(new_vars) : len(new_vars) + len(metric.variables)]
            if metric.name == "loss":
                own = metric.stateless_update_state(own, loss)
            else:
                own = metric.stateless_update_state(own, y, y_pred)
            logs[metric.name] = metric.stateless_result(own)
            new_vars += own
        return logs, new_vars

    class GuideModel(keras.Model):
        def loss_of(self, x, y, y_pred):
            if call_compute_loss:
                return self.compute_loss(y=y, y_pred=y_pred)  # no x, as the guide
            return ops.mean(keras.losses.sparse_categorical_crossentropy(y, y_pred))

        if backend == "tensorflow":

            def train_step(self, data):
                import tensorflow as tf

                x, y = data
                with tf.GradientTape() as tape:
                    y_pred = self(x, training=True)
                    loss = self.loss_of(x, y, y_pred)
                grads = tape.gradient(loss, self.trainable_variables)
                self.optimizer.apply(grads, self.trainable_variables)
                return guide_logs(self, loss, y, y_pred)

        elif backend == "torch":

            def train_step(self, data):
                import torch

                x, y = data
                self.zero_grad()
                y_pred = self(x, training=True)
                loss = self.loss_of(x, y, y_pred)
                loss.backward()
                grads = [v.value.grad for v in self.trainable_weights]
                with torch.no_grad():
                    self.optimizer.apply(grads, self.trainable_weights)
                return guide_logs(self, loss, y, y_pred)

        else:

            def train_step(self, state, data):
                import jax

                trainable, non_trainable, optimizer_vars, metrics_vars = state
                x, y = data

                def loss_fn(trainable):
                    y_pred, non_trainable_new = self.stateless_call(
                        trainable, non_trainable, x, training=True
                    )
                    mapping = list(zip(self.trainable_variables, trainable)) + list(
                        zip(self.non_trainable_variables, non_trainable_new)
                    )
                    with keras.StatelessScope(state_mapping=mapping):
                        loss = self.loss_of(x, y, y_pred)
                    return loss, (y_pred, non_trainable_new)

                (loss, (y_pred, non_trainable)), grads = jax.value_and_grad(
                    loss_fn, has_aux=True
                )(trainable)
                trainable, optimizer_vars = self.optimizer.stateless_apply(
                    optimizer_vars, grads, trainable
                )
                logs, metrics_vars = stateless_guide_logs(
                    self, metrics_vars, loss, y, y_pred
                )
                state = (trainable, non_trainable, optimizer_vars, metrics_vars)
                return logs, state

    return GuideModel


def _guide_model(call_compute_loss=True, metrics_loop=False):
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    h = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(models.CLASSES, activation="softmax", name="out")(h)
    model = _guide_step_model_class(call_compute_loss, metrics_loop)(inputs, outputs)
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=keras.optimizers.SGD(LR),
        metrics=["sparse_categorical_accuracy"] if metrics_loop else None,
    )
    return model


def test_custom_train_step_calling_compute_loss_without_x(rng):
    E, W, b = models.initial_weights(rng)
    x, y, _ = models.batch(rng)
    model = _guide_model()
    models.set_weights(model, E, W, b)
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    "install",
    [
        lambda model: keras_reg.adversarial_training(model, "emb", epsilon=EPSILON),
        # Carried state (a metric variable) also ignores the guide's update; on
        # JAX the guide's StatelessScope maps no metric variable for it to read.
        pytest.param(
            lambda model: keras_reg.install_regularizer(
                model, keras_reg.FreeFGM("emb", epsilon=EPSILON)
            ),
            marks=pytest.mark.backends("tensorflow", "torch"),
        ),
    ],
    ids=["fgm", "free-fgm"],
)
def test_guide_step_updating_every_metric_with_y_and_y_pred(rng, install):
    """The guide's loop over self.metrics runs as on plain Keras."""
    E, W, b = models.initial_weights(rng)
    x, y, _ = models.batch(rng)
    plain = _guide_model(metrics_loop=True)
    models.set_weights(plain, E, W, b)
    want = plain.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    model = _guide_model(metrics_loop=True)
    models.set_weights(model, E, W, b)
    install(model)
    got = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    assert set(want) | {"adversarial_loss"} <= set(got)
    np.testing.assert_allclose(
        got["sparse_categorical_accuracy"], want["sparse_categorical_accuracy"]
    )
    if type(keras_reg.installed_regularizer(model)) is keras_reg.FGM:
        expected = fgm_reference.fgm_sgd_step(E, W, b, x, y, LR, EPSILON)
        for got_weight, want_weight in zip(models.get_weights(model), expected):
            np.testing.assert_allclose(got_weight, want_weight, rtol=2e-5, atol=2e-6)


def test_custom_train_step_without_compute_loss_is_refused(rng):
    x, y, _ = models.batch(rng)
    model = _guide_model(call_compute_loss=False)
    keras_reg.adversarial_training(model, "emb")
    with pytest.raises(RuntimeError, match="never called `self.compute_loss"):
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)


# ---- RegularizationScope restores the previous state in every case -------------
class _Raise(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("boom")


def _plain_step_after(model, rng):
    """Checks that ``model`` now takes exactly a plain SGD step."""
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    models.set_weights(model, E, W, b)
    models.fit_one_batch(model, x, y, w)
    expected = fgm_reference.plain_sgd_step(E, W, b, x, y, LR, w)
    for got, want in zip(models.get_weights(model), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


class _Fuse(keras.layers.Layer):
    """Passes its input through; raises inside a training step once armed."""

    armed = False

    def call(self, h, training=False):
        if training and self.armed:
            raise RuntimeError("step failed")
        return h


def test_scope_restores_after_a_step_raises(rng):
    x, y, w = models.batch(rng)
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    h = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
    fuse = _Fuse()
    h = fuse(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(
        inputs, keras.layers.Dense(models.CLASSES, activation="softmax", name="out")(h)
    )
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(LR)
    )
    scope = keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb"))
    fuse.armed = True
    with pytest.raises(RuntimeError, match="step failed"):
        model.fit(x, y, batch_size=len(x), verbose=0, callbacks=[scope])
    assert keras_reg.installed_regularizer(model) is None
    assert "train_step" not in model.__dict__
    if keras.backend.backend() == "jax":
        # Plain Keras 3.15 on JAX leaves the variables purged after a step that
        # raised while being traced: no later fit works, with or without us.
        return
    fuse.armed = False
    _plain_step_after(model, rng)


def test_scope_restores_after_a_callback_raises(rng):
    x, y, w = models.batch(rng)
    model = models.compiled()
    scope = keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb"))
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, batch_size=len(x), verbose=0, callbacks=[scope, _Raise()])
    # No callback sees that exception: the next fit restores before its step.
    _plain_step_after(model, rng)
    assert keras_reg.installed_regularizer(model) is None


def test_scope_restores_a_previously_installed_regularizer(rng):
    x, y, w = models.batch(rng)
    model = models.compiled()
    before = keras_reg.FGM("emb", epsilon=0.3)
    keras_reg.install_regularizer(model, before)
    scope = keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb"))
    with pytest.warns(UserWarning, match="Replacing"):
        models.fit_one_batch(model, x, y, w, callbacks=[scope])
    assert keras_reg.installed_regularizer(model) is before


def test_two_scopes_in_one_fit_are_refused_and_nothing_is_left(rng):
    x, y, w = models.batch(rng)
    model = models.compiled()
    scopes = [
        keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb")),
        keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb", epsilon=2.0)),
    ]
    with pytest.raises(ValueError, match="Two RegularizationScope"):
        models.fit_one_batch(model, x, y, w, callbacks=scopes)
    assert keras_reg.installed_regularizer(model) is None
    _plain_step_after(model, rng)


# ---- a NaN batch spreads no further than it does in plain Keras -----------------
@pytest.mark.parametrize("l2", [0.0, 1e-3], ids=["lookup", "in-place"])
def test_nan_batch_poisons_no_more_weights_than_plain_keras(l2, rng):
    E, W, b = models.initial_weights(rng)
    x, y, w = models.batch(rng)
    w[0] = np.nan
    results = []
    for regularized in (False, True):
        model = models.build("functional", l2=l2)
        model.compile(
            loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.SGD(0.0)
        )
        models.set_weights(model, E, W, b)
        if regularized:
            keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
        models.fit_one_batch(model, x, y, w)
        results.append(models.get_weights(model))
    for plain, regularized, initial in zip(*results, (E, W, b)):
        np.testing.assert_array_equal(np.isnan(regularized), np.isnan(plain))
        finite = ~np.isnan(plain)
        np.testing.assert_array_equal(regularized[finite], initial[finite])


# ---- fit's logs show what is optimized, and the regulariser's own term ----------
def test_logs_show_the_adversarial_loss_and_removal_drops_it(rng):
    x, y, w = models.batch(rng)
    model = models.compiled(lr=0.0)
    count = len(model.get_weights())
    keras_reg.adversarial_training(model, "emb", epsilon=EPSILON)
    assert len(model.get_weights()) == count  # a logged term is not a weight
    history = model.fit(x, y, batch_size=len(x), epochs=2, verbose=0).history
    assert history["adversarial_loss"] == pytest.approx(history["loss"], rel=1e-6)
    keras_reg.remove_regularization(model)
    assert set(model.fit(x, y, verbose=0).history) == {"loss"}


# ---- errors name the bad value and the fix -------------------------------------
def test_install_errors_name_the_fix():
    model = models.compiled()
    with pytest.raises(TypeError, match=r"keras_reg.FGM\("):
        keras_reg.install_regularizer(model, "FGM")
    with pytest.raises(TypeError, match=r"Every element .* received 'FGM'"):
        keras_reg.install_regularizer(model, [keras_reg.FGM("emb"), "FGM"])
    with pytest.raises(TypeError, match=r"the class FGM"):
        keras_reg.install_regularizer(model, keras_reg.FGM)
    with pytest.raises(TypeError, match="expects a Keras model .* received model=None"):
        keras_reg.remove_regularization(None)
    with pytest.raises(TypeError, match=r"keras_reg.FGM\("):
        keras_reg.callbacks.RegularizationScope("FGM")
    with pytest.raises(ValueError, match="add_clean_loss=True or add_clean_loss"):
        keras_reg.FGM("emb", add_clean_loss="False")
    no_loss = models.build("functional")
    no_loss.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="compiled without one"):
        keras_reg.adversarial_training(no_loss, "emb")


@pytest.mark.parametrize("value", ["x", None, 3])
def test_installed_regularizer_of_a_non_model_names_the_argument(value):
    with pytest.raises(TypeError) as caught:
        keras_reg.installed_regularizer(value)
    message = str(caught.value)
    assert "installed_regularizer() expects a Keras model" in message
    assert f"model={value!r}" in message and type(value).__name__ in message


def test_a_name_shared_by_two_nested_layers_is_ambiguous():
    def block(name):
        inputs = keras.Input((models.LENGTH,), dtype="int32")
        h = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h), name=name)

    inputs = keras.Input((models.LENGTH,), dtype="int32")
    h = keras.layers.Concatenate()([block("left")(inputs), block("right")(inputs)])
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h), name="outer")
    model.compile(loss="mse", optimizer="sgd")
    with pytest.raises(ValueError, match="'outer/left/emb', 'outer/right/emb'"):
        keras_reg.adversarial_training(model, "emb")


def test_an_embedding_the_loss_never_reads_is_an_error_everywhere(rng):
    inputs = keras.Input((models.LENGTH,), dtype="int32")
    unused = keras.layers.Embedding(models.VOCAB, models.DIM, name="unused")
    unused.build((None, models.LENGTH))
    h = keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
    outputs = keras.layers.Dense(models.CLASSES, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(h)
    )
    model = keras.Model(inputs, outputs)
    model.unused = unused
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    keras_reg.adversarial_training(model, "unused")
    x, y, _ = models.batch(rng)
    with pytest.raises(ValueError, match="did not look anything up"):
        model.fit(x, y, verbose=0)


@pytest.mark.backends("torch")
def test_torch_jit_compile_is_refused_at_install():
    model = models.compiled()
    model.jit_compile = True
    with pytest.raises(ValueError, match="jit_compile=False"):
        keras_reg.adversarial_training(model, "emb")


@pytest.mark.backends("tensorflow")
def test_tf_keras_model_outside_a_bert4keras_process_needs_tf_keras_scope(rng):
    import tf_keras

    inputs = tf_keras.Input((models.LENGTH,), dtype="int32")
    h = tf_keras.layers.Embedding(models.VOCAB, models.DIM, name="emb")(inputs)
    h = tf_keras.layers.GlobalAveragePooling1D()(h)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(models.CLASSES)(h))
    model.compile(loss="mse", optimizer="sgd")
    x, y, _ = models.batch(rng)
    targets = np.eye(models.CLASSES)[y]
    keras3_scope = keras_reg.callbacks.RegularizationScope(keras_reg.FGM("emb"))
    with pytest.raises(TypeError, match="tf_keras_scope"):
        model.fit(x, targets, verbose=0, callbacks=[keras3_scope])
    scope = keras_reg.callbacks.tf_keras_scope(keras_reg.FGM("emb"))
    history = model.fit(x, targets, verbose=0, callbacks=[scope]).history
    assert "adversarial_loss" in history
    assert keras_reg.installed_regularizer(model) is None


def test_vat_with_gradient_accumulation(rng):
    """Crashed on JAX: the seed read optimizer.iterations, a quotient there."""
    model = models.build("functional")
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer)
    unlabeled = rng.integers(0, models.VOCAB, (16, models.LENGTH))
    keras_reg.virtual_adversarial_training(model, "emb", unlabeled=unlabeled, seed=0)
    x, y, _ = models.batch(rng, size=8)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2
