"""A tiny bert4keras BERT classifier for the tf_keras tests."""

import bert4keras.models
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
