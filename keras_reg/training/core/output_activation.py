"""Reading, where the model declares it, whether its outputs are probabilities.

A functional or Sequential model's output tensors remember the layer that made
them; that layer's activation tells probabilities (softmax, sigmoid) from
logits or a regression output (linear). A subclassed model declares nothing:
its outputs are not read.
"""

from keras_reg.backend import keras_internals

_PROBABILITIES = ("softmax", "sigmoid", "log_softmax")
_PROBABILITY_LAYERS = ("Softmax",)


def _output_tensors(model):
    try:
        outputs = getattr(model, "outputs", None)
    except (AttributeError, ValueError):  # a subclassed model
        return []
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    return list(outputs or [])


def _kind_of(layer):
    if type(layer).__name__ in _PROBABILITY_LAYERS:
        return "probabilities"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    if name is None:
        return None
    if name in _PROBABILITIES:
        return "probabilities"
    return "linear" if name == "linear" else None


def linear_outputs(model):
    """Returns the names of the layers making ``model``'s outputs, if all linear.

    Returns:
        The output layers' names when every output of a functional or
        Sequential model comes from a layer with a linear activation (logits,
        or a regression output); an empty list otherwise, or when the model
        does not declare its outputs.
    """
    layers = []
    for tensor in _output_tensors(model):
        made_by = keras_internals.producing_layer(tensor)
        if made_by is None:
            return []
        layers.append(made_by[0])
    if not layers or any(_kind_of(layer) != "linear" for layer in layers):
        return []
    return [layer.name for layer in layers]
