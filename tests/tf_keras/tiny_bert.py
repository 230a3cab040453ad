"""A tiny bert4keras BERT classifier for the tf_keras tests."""

import bert4keras.models
import numpy as np
import tf_keras


def classifier(optimizer, metrics=None):
    """Returns a compiled 1-layer BERT (vocab 40, hidden 16) with a softmax head."""
    bert = bert4keras.models.build_transformer_model(
        config_path=None,
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_act="gelu",
        max_position=16,
        type_vocab_size=2,
    )
    cls = tf_keras.layers.Lambda(lambda h: h[:, 0], name="CLS-token")(bert.output)
    out = tf_keras.layers.Dense(2, activation="softmax", name="classifier")(cls)
    model = tf_keras.Model(bert.inputs, out)
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=metrics
    )
    return model


def batch(seed=1, repeat=True):
    """Returns ([token ids, segment ids], labels): 4 sequences of 10 tokens.

    With ``repeat``, token 3 repeats token 2 in each sequence (repeated rows).
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 40, size=(4, 10)).astype("int32")
    if repeat:
        tokens[:, 3] = tokens[:, 2]
    segments = np.zeros_like(tokens)
    labels = rng.integers(0, 2, size=(4,)).astype("int32")
    return [tokens, segments], labels
