"""The step's random draws: Keras's numbers, with Philox named under XLA.

Under ``jit_compile=True`` TensorFlow's ``auto_select`` algorithm (what
``keras.random.normal`` uses) draws the same numbers as Philox but cost about
a plain step on a CPU for VAT's draw, so the TensorFlow step names Philox
there (`Step.normal`, `Step.uniform`); elsewhere a draw is ``keras.random``'s.
"""

import numpy as np
import pytest

from keras_reg import TrainingRegularizer
from keras_reg._compat import keras
from keras_reg.backend import keras_internals
from keras_reg.training.core import installer

SHAPE = (3, 5)


class RecordedDraws(TrainingRegularizer):
    """Logs the sums of one normal and one uniform draw of the step."""

    def __init__(self, seed):
        self.generator = keras.random.SeedGenerator(seed)

    def logged_terms(self):
        return ("normal_sum", "uniform_sum")

    def regularized_loss(self, step):
        seed = step.seed(self.generator)
        before = _graph_ops()
        normal = step.normal(SHAPE, seed)
        uniform = step.uniform(SHAPE, seed, -1.0, 1.0)
        self.algorithms = {
            (op.type, int(_static(op.inputs[3])))
            for op in _graph_ops()[len(before) :]
            if op.type in ("StatelessRandomNormalV2", "StatelessRandomUniformV2")
        }
        step.log("normal_sum", keras.ops.sum(normal))
        step.log("uniform_sum", keras.ops.sum(uniform))
        return step.loss_plus(0.0)


def _graph_ops():
    """The operations of the TensorFlow graph being traced (none elsewhere)."""
    if keras.backend.backend() != "tensorflow":
        return []
    import tensorflow as tf

    graph = tf.compat.v1.get_default_graph()
    return list(graph.get_operations()) if hasattr(graph, "get_operations") else []


def _static(tensor):
    import tensorflow as tf

    return tf.get_static_value(tensor)


# tf.random.Algorithm values: the ``alg`` input of the stateless V2 ops.
PHILOX, AUTO_SELECT = 1, 3


def _logged_draws(jit_compile, regularizer=None):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer="sgd", jit_compile=jit_compile)
    installer.install(model, regularizer or RecordedDraws(seed=7))
    x = np.ones((4, 2), "float32")
    logs = model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0).history
    return logs["normal_sum"][0], logs["uniform_sum"][0]


def _expected(draw_normal, draw_uniform):
    generator = keras.random.SeedGenerator(7)
    normal = draw_normal(generator)
    return float(np.sum(normal)), float(np.sum(draw_uniform(generator)))


@pytest.mark.backends("tensorflow", reason="the XLA draw is TensorFlow's")
def test_graph_mode_draws_are_keras_random_draws():
    expected = _expected(
        lambda g: keras.random.normal(SHAPE, seed=g),
        lambda g: keras.random.uniform(SHAPE, minval=-1.0, maxval=1.0, seed=g),
    )
    regularizer = RecordedDraws(seed=7)
    np.testing.assert_allclose(_logged_draws(False, regularizer), expected, rtol=1e-6)
    assert {alg for _, alg in regularizer.algorithms} == {AUTO_SELECT}


@pytest.mark.backends("tensorflow", reason="the XLA draw is TensorFlow's")
def test_xla_draws_name_philox():
    # The same numbers as Keras's draw under XLA, from ops given Philox.
    import tensorflow as tf

    regularizer = RecordedDraws(seed=7)
    drawn = _logged_draws(True, regularizer)
    assert regularizer.algorithms == {
        ("StatelessRandomNormalV2", PHILOX),
        ("StatelessRandomUniformV2", PHILOX),
    }

    def philox(draw, **kwargs):
        def drawn(generator):
            seed = keras_internals.tf_stateless_seed(generator)
            compiled = tf.function(
                lambda s: draw(SHAPE, seed=s, alg="philox", **kwargs),
                jit_compile=True,
            )
            return compiled(seed).numpy()

        return drawn

    expected = _expected(
        philox(tf.random.stateless_normal),
        philox(tf.random.stateless_uniform, minval=-1.0, maxval=1.0),
    )
    np.testing.assert_allclose(drawn, expected, rtol=1e-5)


@pytest.mark.backends(
    "torch", reason="JAX derives each step's seed from the step count (Step.seed)"
)
def test_torch_draws_with_keras_random():
    expected = _expected(
        lambda g: keras.ops.convert_to_numpy(keras.random.normal(SHAPE, seed=g)),
        lambda g: keras.ops.convert_to_numpy(
            keras.random.uniform(SHAPE, minval=-1.0, maxval=1.0, seed=g)
        ),
    )
    np.testing.assert_allclose(_logged_draws(False), expected, rtol=1e-6)
