"""Backend dispatch: the only package that knows which framework runs a model.

`for_model` returns the module that trains a model (``tensorflow``, ``jax``,
``torch`` or ``tf_keras``); each offers the same names:

- ``step_scope(model, variables, step_args=(), layers=(), inputs=False,
  several=False, lookups=())``: a context manager entered around one training
  step, returning a recorder (never None) that the step's `Step` uses to take
  gradients of the loss w.r.t. ``variables`` (the regulariser's watched
  variables), the outputs of ``layers`` and, with ``inputs``, the batch's
  float inputs; ``step_args`` are the positional arguments of ``train_step``
  (the JAX state and batch); ``several``: several regularisers (a
  composition) read the recorder; ``lookups``: the required lookup layers,
  whose matrix gradient may be taken as rows (PyTorch records their ids).
- ``Step``: a `keras_reg.backend.base.Step` with the framework's autodiff,
  sparse handling and perturbation (in place on TensorFlow, by substituting
  values on JAX and PyTorch: see ``stateless.py``).
- ``attach_metric`` / ``detach_metric``, ``attach_state`` / ``detach_state``:
  the metrics that log a regulariser's terms and the state it carries from
  step to step.
- ``quiet_loss_metrics`` and ``report_loss``: what ``fit`` logs as the loss.

Every private Keras attribute the backends read is behind a function in
`keras_reg.backend.keras_internals`.
"""

import importlib

_MODULES = {
    "tf_keras": "keras_reg.backend.tf_keras",
    "tensorflow": "keras_reg.backend.tensorflow",
    "jax": "keras_reg.backend.jax",
    "torch": "keras_reg.backend.torch",
}


def framework(model):
    """Returns ``'tf_keras'`` for a tf_keras (Keras 2) model, else the Keras 3 backend.

    Args:
        model: A Keras 3 or tf_keras model.

    Returns:
        One of ``'tf_keras'``, ``'tensorflow'``, ``'jax'``, ``'torch'``.
    """
    for cls in type(model).__mro__:
        if cls.__module__.startswith("tf_keras."):
            return "tf_keras"
    from keras_reg._compat import keras

    return keras.backend.backend()


def for_model(model):
    """Returns the backend module that trains ``model``.

    Raises:
        NotImplementedError: The model's framework has no keras_reg backend yet.
    """
    name = framework(model)
    if name not in _MODULES:
        raise NotImplementedError(
            f"keras_reg's training-step regularisers do not support the {name!r} "
            f"backend yet (supported: {', '.join(sorted(_MODULES))}). "
            "Set KERAS_BACKEND to tensorflow, jax or torch before importing Keras."
        )
    return importlib.import_module(_MODULES[name])
