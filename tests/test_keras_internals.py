"""The Keras 3 internals keras_reg reads, checked on the installed Keras.

One test per function of `keras_reg.backend.keras_internals`: it builds a
small compiled model and checks that the function returns what keras_reg
relies on, so a Keras release that removes or changes an internal fails here,
naming it. Then: a missing internal raises an error naming the attribute and
the Keras version, and no other module of keras_reg reads a Keras private
(`test_no_keras_privates_outside_keras_internals`).
"""

import ast
import pathlib

import numpy as np
import pytest

import keras_reg
from keras_reg._compat import keras
from keras_reg.backend import keras_internals as internals

ops = keras.ops
VERSION = f"Keras {keras.__version__}"


def _require(obj, attribute):
    assert hasattr(obj, attribute), (
        f"{type(obj).__name__}.{attribute} is gone in {VERSION}: "
        "keras_reg.backend.keras_internals reads it"
    )


def _two_outputs(loss=True):
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(4, name="shared")(inputs)
    first = keras.layers.Dense(2, name="a")(hidden)
    second = keras.layers.Dense(1, name="b")(hidden)
    model = keras.Model(inputs, {"a": first, "b": second})
    model.compile(
        optimizer="sgd",
        loss={"a": "sparse_categorical_crossentropy", "b": "mse"} if loss else None,
        loss_weights={"a": 2.0, "b": 1.0} if loss else None,
    )
    return model


def _data():
    x = np.ones((4, 3), "float32")
    return x, {"a": np.array([0, 1, 0, 1]), "b": np.ones((4, 1), "float32")}


# ---- variables and scopes -----------------------------------------------------------
def test_stateless_scope_value_reads_the_enclosing_scope():
    mapped = keras.Variable(np.zeros(2, "float32"))
    unmapped = keras.Variable(np.zeros(2, "float32"))
    assert internals.in_stateless_scope() is False
    assert internals.stateless_scope_value(mapped) is None
    value = ops.ones(2)
    with keras.StatelessScope(state_mapping=[(mapped, value)]):
        assert internals.in_stateless_scope() is True
        np.testing.assert_array_equal(
            ops.convert_to_numpy(internals.stateless_scope_value(mapped)), [1, 1]
        )
        assert internals.stateless_scope_value(unmapped) is None


def test_own_pass_losses_empties_the_pinned_list_and_restores_it():
    model = _two_outputs()
    _require(model, "_losses_override")
    loss = ops.ones(())
    model._losses_override = [loss]
    with internals.own_pass_losses(model):
        assert len(model._losses_override) == 0
    assert [id(x) for x in model._losses_override] == [id(loss)]
    model._losses_override = []
    with internals.own_pass_losses(model):  # nothing pinned: nothing changes
        assert len(model._losses_override) == 0


# ---- the layer tracker --------------------------------------------------------------
class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)


def test_tracker_unlocked_then_untrack():
    model = Subclassed()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), epochs=1, verbose=0)
    _require(model, "_tracker")
    assert model._tracker.locked, "a built subclassed model's tracker is locked"
    metric = keras.metrics.Mean(name="probe")
    with pytest.raises(ValueError):
        model.probe_metric = metric
    with internals.tracker_unlocked(model):
        model.probe_metric = metric
    assert model._tracker.locked
    assert any(m is metric for m in model.metrics)
    internals.untrack(model, metric)
    assert not any(m is metric for m in model.metrics)


# ---- the compiled loss --------------------------------------------------------------
def test_compile_loss_is_the_container_with_one_tracker_per_output():
    model = _two_outputs()
    model.evaluate(*_data(), verbose=0)
    container = internals.compile_loss(model)
    assert container is not None and container.built
    assert sorted(m.name for m in container.metrics) == ["a_loss", "b_loss"]
    assert internals.compile_loss(_two_outputs(loss=False)) is None
    assert internals.compile_loss(keras.Sequential([keras.layers.Dense(1)])) is None


def test_compile_loss_entries_name_loss_and_weight_per_output():
    model = _two_outputs()
    model.evaluate(*_data(), verbose=0)
    entries = internals.compile_loss_entries(internals.compile_loss(model))
    assert [(name, weight) for name, _, weight in entries] == [("a", 2.0), ("b", 1.0)]
    assert all(callable(loss) for _, loss, _ in entries)
    # The trackers come in the same order (keras_reg pairs them by position).
    names = [m.name for m in internals.compile_loss(model).metrics]
    assert names == [f"{name}_loss" for name, _, _ in entries]


def test_aggregate_added_loss_sums_and_casts_to_floatx():
    model = _two_outputs()
    total = internals.aggregate_added_loss(model, ops.convert_to_tensor([1, 2]))
    assert keras.backend.standardize_dtype(total.dtype) == "float32"
    assert float(ops.convert_to_numpy(total)) == 3.0


def test_scale_loss_for_distribution_is_identity_on_one_replica():
    loss = internals.scale_loss_for_distribution(ops.convert_to_tensor(2.5))
    assert float(ops.convert_to_numpy(loss)) == 2.5


@pytest.mark.backends("jax")
def test_jax_forward_returns_y_pred_second_of_four():
    model = _two_outputs()
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    _require(type(model), internals.JAX_FORWARD)
    forward = getattr(model, internals.JAX_FORWARD)
    values = lambda variables: [v.value for v in variables]  # noqa: E731
    loss, aux = forward(
        values(model.trainable_variables),
        values(model.non_trainable_variables),
        values(model.metrics_variables),
        x, y, None, training=False,
        optimizer_variables=values(model.optimizer.variables),
    )
    assert isinstance(aux, tuple) and len(aux) == 4
    np.testing.assert_allclose(
        np.asarray(aux[1]["b"]), ops.convert_to_numpy(model(x)["b"]), rtol=1e-6
    )
    replaced = internals.jax_aux_with_output(aux, "output")
    assert replaced[1] == "output" and replaced[0] is aux[0] and replaced[3] is aux[3]
    assert internals.jax_aux_with_output(aux[:3], "output") is None


# ---- layers and losses --------------------------------------------------------------
class _Holder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(2, name="held")

    def call(self, x):
        return self.inner(x)


def test_sublayers_finds_nested_and_held_layers():
    inner = keras.Sequential([keras.layers.Dense(2, name="deep")], name="inner")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, _Holder(name="holder")(inner(inputs)), name="outer")
    _require(model, "_flatten_layers")
    names = {layer.name for layer in internals.sublayers(model)}
    assert {"inner", "deep", "holder", "held"} <= names
    direct = {layer.name for layer in internals.sublayers(model, recursive=False)}
    assert {"inner", "holder"} <= direct and not {"deep", "held"} & direct


def test_sublayers_falls_back_to_the_layers_lists():
    class Bare:
        def __init__(self, name, layers=()):
            self.name, self.layers = name, list(layers)

    tree = Bare("root", [Bare("a", [Bare("b")]), Bare("c")])
    assert [x.name for x in internals.sublayers(tree)] == ["a", "b", "c"]
    assert [x.name for x in internals.sublayers(tree, recursive=False)] == ["a", "c"]


def test_inbound_input_tensors_are_the_layer_inputs():
    ids = keras.Input((5,), dtype="int32", name="ids")
    other = keras.Input((5,), name="other")
    embedding = keras.layers.Embedding(10, 4, name="emb")
    pooled = keras.layers.GlobalAveragePooling1D()(embedding(ids))
    # Every input feeds the output (Keras 3.12 refuses an unused one); only
    # `ids` goes through the embedding.
    output = keras.layers.Add()(
        [keras.layers.Dense(1)(pooled), keras.layers.Dense(1)(other)]
    )
    model = keras.Model([ids, other], output)
    _require(embedding, "_inbound_nodes")
    fed = internals.inbound_input_tensors(embedding)
    assert any(t is model.inputs[0] for t in fed)
    assert not any(t is model.inputs[1] for t in fed)
    assert internals.inbound_input_tensors(object()) == []


def test_producing_layer_and_node_inputs_walk_a_functional_graph():
    model = _two_outputs()
    made_by = internals.producing_layer(model.outputs[0])
    assert made_by is not None, f"KerasTensor._keras_history is gone in {VERSION}"
    layer, node_index = made_by
    assert layer.name in ("a", "b")
    fed = internals.node_input_tensors(layer, node_index)
    assert len(fed) == 1, f"Layer._inbound_nodes[i].input_tensors changed in {VERSION}"
    shared, _ = internals.producing_layer(fed[0])
    assert shared.name == "shared"
    assert internals.producing_layer(np.zeros(3)) is None
    assert internals.node_input_tensors(layer, 99) == []


def test_loss_function_options_are_the_wrapped_function_kwargs():
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _require(loss, "_fn_kwargs")
    assert internals.loss_function_options(loss)["from_logits"] is True
    assert internals.loss_function_options(keras.losses.mean_squared_error) == {}


# ---- a missing internal is named, with the version ----------------------------------
def _fake(**attributes):
    return type("Throwaway", (), attributes)()


@pytest.mark.parametrize(
    "call, attribute",
    [
        (lambda: internals.compile_loss(_fake(compiled=True)), "Trainer._compile_loss"),
        (lambda: internals.compile_loss_entries(_fake()), "CompileLoss._flat_losses"),
        (lambda: internals.untrack(_fake(), None), "Layer._tracker"),
        (lambda: internals.aggregate_added_loss(_fake(), 1.0),
         "Trainer._aggregate_additional_loss"),
    ],
)
def test_missing_attribute_names_it_and_the_keras_version(call, attribute):
    with pytest.raises(RuntimeError) as error:
        call()
    assert attribute in str(error.value) and VERSION in str(error.value)


def test_attribute_removed_from_a_compiled_model_is_named(monkeypatch):
    model = _two_outputs()
    monkeypatch.delattr(model, "_compile_loss")
    with pytest.raises(RuntimeError, match="_compile_loss") as error:
        internals.compile_loss(model)
    assert VERSION in str(error.value)


def test_missing_private_module_function_is_named(monkeypatch):
    from keras.src.backend.common import stateless_scope

    monkeypatch.delattr(stateless_scope, "in_stateless_scope")
    with pytest.raises(RuntimeError) as error:
        internals.in_stateless_scope()
    message = str(error.value)
    assert "keras.src.backend.common.stateless_scope.in_stateless_scope" in message
    assert VERSION in message


# ---- nothing else reads a Keras private ---------------------------------------------
PACKAGE = pathlib.Path(keras_reg.__file__).parent
OWNER = PACKAGE / "backend" / "keras_internals.py"
PRIVATE_MODULES = ("keras.src", "tf_keras.src")
# Private attributes of Keras 3 / tf_keras objects: the ones keras_internals
# reads, and other common ones that are as tempting.
KERAS_PRIVATES = frozenset({
    "_compile_loss", "_tracker", "_losses_override", "_metrics",
    "_total_loss_mean", "_losses", "_loss_weights", "_flatten_layers",
    "_inbound_nodes", "_fn_kwargs", "_flat_losses", "_per_output_metrics",
    "_output_names", "_aggregate_additional_loss", "_loss_tracker",
    "_compile_metrics", "_layers", "_outbound_nodes", "_trainable_variables",
    "_non_trainable_variables", "_jax_state", "_jax_state_synced",
    "_flatten_modules", "_self_tracked_trackables", "_distribution_strategy",
    "_build_shapes_dict", "_call_signature", "_keras_history", "_train_counter",
    "_steps_per_execution", "_metrics_lock", "_loss_ids", "_user_loss",
    "_is_compiled", "_run_eagerly", "_jit_compile", "_auto_track_sub_layers",
    "_obj_reference_counts_dict", "_trainable_weights", "_non_trainable_weights",
    "_functional", "_symbolic_call", "_convert_input_args", "_default_save_signature",
})
# keras_reg's own attributes that share a Keras private's name: (class name
# pattern, attribute). `Step._metrics` is the dictionary of logged terms.
OWN = {("Step", "_metrics")}


def _offences(path):
    source = path.read_text()
    where = path.relative_to(PACKAGE) if PACKAGE in path.parents else path.name
    found = [
        f"{where}:{number}: {module}"
        for number, line in enumerate(source.splitlines(), 1)
        for module in PRIVATE_MODULES
        if module in line
    ]
    tree = ast.parse(source)
    classes = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for child in ast.walk(node):
                classes.setdefault(id(child), node.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in KERAS_PRIVATES:
            own = isinstance(node.value, ast.Name) and node.value.id == "self" and any(
                cls in classes.get(id(node), "") and node.attr == attr
                for cls, attr in OWN
            )
            if not own:
                found.append(f"{where}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in KERAS_PRIVATES:
            found.append(f"{where}:{node.lineno}: {node.value!r}")
    return found


def test_no_keras_privates_outside_keras_internals():
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if p != OWNER]
    assert len(files) > 30, f"found only {len(files)} files under {PACKAGE}"
    offences = [o for path in files for o in _offences(path)]
    assert not offences, (
        "Keras internals read outside keras_reg/backend/keras_internals.py "
        "(add a function there instead): " + "; ".join(offences)
    )


@pytest.mark.parametrize(
    "line",
    [
        "from keras.src.losses import loss",
        "x = model._compile_loss",
        "layers = model._flatten_layers(include_self=False)",
        "tracker = getattr(model, '_tracker', None)",
        "class Probe:\n    def f(self):\n        return self._metrics",
    ],
)
def test_the_privates_scan_sees_an_added_access(tmp_path, line):
    probe = tmp_path / "probe.py"
    probe.write_text(line + "\n")
    assert _offences(probe)


def test_the_privates_scan_allows_steps_own_metrics(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("class Step:\n    def f(self):\n        return self._metrics\n")
    assert not _offences(probe)
