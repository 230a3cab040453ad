"""FGM's floor on TensorFlow: a hand-written two-pass FGM step and its pieces.

FGM needs the gradient of the clean loss with respect to the looked-up rows
before it can perturb them, so a step is at least

    clean forward + backward to the lookup  +  a full training step at E + delta.

`HandWrittenSteps` writes that minimum directly in one ``tf.function`` per
step (no Keras ``train_step``, no interception): the model split at its
embedding lookup, the clean backward taken only to the lookup's output, the
repeated tokens' rows summed once (``unique`` + ``unsorted_segment_sum``, the
whole-matrix FGM direction), the perturbed pass and Adam. Its plain step is
the same code without the first pass, so ``fgm / plain`` of the hand-written
pair is what two passes cost on the machine, and ``clean_to_lookup / plain``
is the first pass alone. `benchmarks/fgm_step.py` times them beside
keras_reg's FGM.

The same BERT shape as `benchmarks/bert_shaped.py` (random weights).
"""

import tensorflow as tf

from benchmarks import bert_shaped
from keras_reg._compat import keras


class HandWrittenSteps:
    """Plain, FGM and clean-pass-only steps written with ``tf.GradientTape``.

    Args:
        jit_compile: Compile each step with XLA.
        vocab, hidden, layers, heads, length: The BERT shape.
        epsilon: FGM's radius (the norm of the whole-matrix perturbation).
    """

    def __init__(
        self, jit_compile, vocab=21128, hidden=128, layers=2, heads=2, length=64,
        epsilon=1.0,
    ):
        keras.utils.set_random_seed(0)
        self.embedding = keras.layers.Embedding(vocab, hidden)
        self.embedding.build((None, length))
        embedded = keras.Input((length, hidden))
        h = bert_shaped.PositionEmbedding()(embedded)
        h = keras.layers.LayerNormalization()(h)
        for i in range(layers):
            h = bert_shaped.transformer_block(h, hidden, heads, name=f"block{i}")
        pooled = keras.layers.GlobalAveragePooling1D()(h)
        outputs = keras.layers.Dense(2, activation="softmax")(pooled)
        self.rest = keras.Model(embedded, outputs)
        self.variables = [self.embedding.embeddings] + self.rest.trainable_variables
        self.optimizer = keras.optimizers.Adam()
        self.optimizer.build(self.variables)
        self.loss = keras.losses.SparseCategoricalCrossentropy()
        self.epsilon, self.hidden = epsilon, hidden
        compile_step = tf.function(jit_compile=jit_compile)
        self._plain = compile_step(self._plain_step)
        self._fgm = compile_step(self._fgm_step)
        self._clean = compile_step(self._clean_to_lookup)

    def _plain_step(self, ids, labels):
        with tf.GradientTape() as tape:
            loss = self.loss(labels, self.rest(self.embedding(ids), training=True))
        self.optimizer.apply(tape.gradient(loss, self.variables), self.variables)
        return loss

    def _direction(self, ids, labels):
        """The whole-matrix FGM perturbation, as rows at each token occurrence."""
        looked_up = self.embedding(ids)
        with tf.GradientTape() as tape:
            tape.watch(looked_up)
            loss = self.loss(labels, self.rest(looked_up, training=True))
        gradient = tape.gradient(loss, looked_up)  # one row per occurrence
        unique, index = tf.unique(tf.reshape(ids, [-1]))
        rows = tf.math.unsorted_segment_sum(
            tf.reshape(gradient, [-1, self.hidden]), index, tf.size(unique)
        )
        scale = self.epsilon / (tf.norm(rows) + 1e-12)
        return tf.reshape(tf.gather(rows, index), tf.shape(gradient)) * scale

    def _fgm_step(self, ids, labels):
        delta = tf.stop_gradient(self._direction(ids, labels))
        with tf.GradientTape() as tape:
            looked_up = self.embedding(ids) + delta
            loss = self.loss(labels, self.rest(looked_up, training=True))
        self.optimizer.apply(tape.gradient(loss, self.variables), self.variables)
        return loss

    def _clean_to_lookup(self, ids, labels):
        return tf.reduce_sum(self._direction(ids, labels))

    def plain(self, ids, labels):
        """One plain step (forward, backward to every weight, Adam)."""
        return self._plain(ids, labels).numpy()

    def fgm(self, ids, labels):
        """One FGM step: the clean pass to the lookup, then a step at E + delta."""
        return self._fgm(ids, labels).numpy()

    def clean_to_lookup(self, ids, labels):
        """FGM's first pass alone: forward and backward to the looked-up rows."""
        return self._clean(ids, labels).numpy()
