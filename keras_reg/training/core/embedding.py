"""Finding the embedding matrix a regulariser perturbs, by layer name."""

from keras_reg.backend import keras_internals


def _all_layers(model):
    """Returns every layer inside ``model`` (nested models and sublayers too)."""
    return keras_internals.sublayers(model)


def _named_paths(model, name):
    """Returns the paths (``outer/inner/name``) of the distinct layers called ``name``.

    A layer shared by several parents is one layer: it is listed once.
    """
    paths, seen = [], set()

    def walk(layer, prefix):
        for child in keras_internals.sublayers(layer, recursive=False):
            path = f"{prefix}/{child.name}" if prefix else child.name
            if child.name == name and id(child) not in seen:
                seen.add(id(child))
                paths.append(path)
            walk(child, path)

    walk(model, model.name)
    return paths


def _matrix_of(layer):
    """Returns the layer's 2-D ``embeddings`` variable, or None."""
    matrix = getattr(layer, "embeddings", None)
    shape = getattr(matrix, "shape", None)
    if shape is None or len(shape) != 2 or not hasattr(matrix, "assign"):
        return None
    return matrix


def embedding_layer_names(model):
    """Returns the names of the layers of ``model`` that own an embedding matrix."""
    return [layer.name for layer in _all_layers(model) if _matrix_of(layer) is not None]


def find_embedding_layer(model, layer_name):
    """Returns the layer called ``layer_name``, checking it owns an embedding matrix.

    The matrix is the layer's ``embeddings`` attribute, as in
    ``keras.layers.Embedding``, keras-hub's ``ReversibleEmbedding`` and
    bert4keras's ``Embedding`` (``'Embedding-Token'`` in its BERT).

    Args:
        model: A Keras 3 or tf_keras model.
        layer_name: The name of the embedding layer.

    Returns:
        The layer. Its matrix is read with `embedding_matrix` when the step runs,
        so a subclassed model may be installed on before it is built.

    Raises:
        ValueError: No layer has that name, several different layers do (the
            message lists their paths), or the (built) layer has no embedding
            matrix (the message lists the layers that do have one).
    """
    layers = [layer for layer in _all_layers(model) if layer.name == layer_name]
    candidates = embedding_layer_names(model)
    listing = ", ".join(repr(name) for name in candidates) or "none"
    if not layers:
        raise ValueError(
            f"No layer named {layer_name!r} in model {model.name!r}. "
            f"Layers with an embedding matrix: {listing}. "
            "Pass one of those names."
        )
    distinct = {id(layer): layer for layer in layers}
    if len(distinct) > 1:
        paths = ", ".join(repr(p) for p in _named_paths(model, layer_name))
        raise ValueError(
            f"{len(distinct)} different layers of model {model.name!r} are named "
            f"{layer_name!r}: {paths}. keras_reg cannot tell which one to use. "
            "Give the embedding layer a unique name, e.g. "
            "`keras.layers.Embedding(..., name='Embedding-Token')`."
        )
    layer = layers[0]
    if getattr(layer, "built", True):
        embedding_matrix(layer, listing)
    return layer


def embedding_matrix(layer, listing=None):
    """Returns the ``vocabulary x dim`` variable of an embedding layer.

    Args:
        layer: The layer found by `find_embedding_layer`.
        listing: Names of the model's embedding layers, for the error message.

    Raises:
        ValueError: The layer has no 2-D ``embeddings`` variable.
    """
    matrix = _matrix_of(layer)
    if matrix is None:
        others = f" Layers with an embedding matrix: {listing}." if listing else ""
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) has no embedding "
            f"matrix (a 2-D `embeddings` variable).{others} "
            "Pass the name of an embedding layer."
        )
    return matrix


def largest_embedding(model, variables):
    """Returns ``(layer, matrix)``: the largest embedding matrix in ``variables``.

    For a method over every weight (SAM, AWP, the parameter penalty): where the
    layer is a plain lookup, the backend takes the matrix's gradient, and what
    is built from it, as the batch's rows (see
    `keras_reg.backend.base.Step.matrix_loss_gradients`); at a large
    vocabulary the table is most of the model. None without an embedding.

    Args:
        model: A Keras 3 or tf_keras model.
        variables: The variables the method works on.
    """
    found = None
    for layer in keras_internals.sublayers(model):
        matrix = getattr(layer, "embeddings", None)
        if matrix is None or len(matrix.shape) != 2:
            continue
        if not any(matrix is v for v in variables):
            continue
        if found is None or _size(matrix) > _size(found[1]):
            found = (layer, matrix)
    return found


def _size(variable):
    rows, columns = variable.shape
    return int(rows) * int(columns)
