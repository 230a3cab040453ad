"""Import Keras 3 even where another library has rebound ``import keras``.

bert4keras (with ``TF_KERAS=1``) executes ``sys.modules['keras'] = tf.keras`` at
import time, so in that process a later ``import keras`` yields tf_keras.
Every keras_reg module that needs Keras 3 takes it from here instead:
``from keras_reg._compat import keras``.
"""

import importlib
import importlib.machinery
import os
import sys


def _keras3_directory():
    spec = importlib.machinery.PathFinder.find_spec("keras")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Keras 3 is not installed: pip install 'keras>=3'.")
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def _belongs_to(module, directory):
    path = getattr(module, "__file__", None) or ""
    return os.path.realpath(path).startswith(directory + os.sep)


def import_keras3():
    """Returns the Keras 3 package, importing it around a rebound ``keras``.

    Returns:
        The ``keras`` (3.x) module.

    Raises:
        ImportError: Keras 3 is not installed.
    """
    current = sys.modules.get("keras")
    if current is None or hasattr(current, "StatelessScope"):
        return importlib.import_module("keras")
    directory = _keras3_directory()
    foreign = {
        name: module
        for name, module in list(sys.modules.items())
        if (name == "keras" or name.startswith("keras."))
        and not _belongs_to(module, directory)
    }
    for name in foreign:
        del sys.modules[name]
    try:
        return importlib.import_module("keras")
    finally:
        sys.modules.update(foreign)


keras = import_keras3()
