"""Import Keras 3 even where another library has rebound ``import keras``.

bert4keras (with ``TF_KERAS=1``) executes ``sys.modules['keras'] = tf.keras`` at
import time, so in that process a later ``import keras`` yields tf_keras.
Every keras_reg module that needs Keras 3 takes it from here instead:
``from keras_reg._compat import keras``.

This module also holds the oldest supported version of each framework
(``MINIMUM_VERSIONS``, the lower bounds declared in ``pyproject.toml``) and
checks them when keras_reg is imported, so that an old stack fails at once with
the package and version to install rather than deep inside a training step.
A feature that needs a newer release than the floor calls ``require`` when it
is installed on a model.
"""

import importlib
import importlib.machinery
import os
import re
import sys

# The oldest releases the test suite passes on (tests run on both ends of the
# range). Keep in step with pyproject.toml and requirements-oldest.txt.
MINIMUM_VERSIONS = {
    # 3.9-3.11: on JAX, a RegularizationScope's logged terms (metrics added
    # after fit starts) break Keras's state sharding (IndexError in
    # _enforce_jax_state_sharding); 3.8: LossScaleOptimizer.iterations stays 0
    # (the step that schedules read under mixed_float16); 3.4: no per-output
    # "<name>_loss" logs; 3.3: compute_loss has no `training` argument.
    "keras": "3.12.0",
    # The first release whose tf.keras is Keras 3 and that reads
    # TF_USE_LEGACY_KERAS (the tf_keras / bert4keras path).
    "tensorflow": "2.16.1",
    "tf_keras": "2.16.0",
    # The newest JAX that installs beside TensorFlow 2.16 (ml-dtypes 0.3).
    "jax": "0.4.30",
    # The oldest PyTorch tested (CPU build).
    "torch": "2.13.0",
}
_PIP_NAMES = {"tf_keras": "tf-keras"}


def version_tuple(version):
    """Returns the numeric release of a version string, e.g. ``(2, 13, 0)``.

    Local and pre-release tails (``+cpu``, ``rc1``, ``.dev2024``) are ignored.

    Args:
        version: A version string such as ``"3.8.0"`` or ``"2.13.0+cpu"``.

    Returns:
        A tuple of ints, padded to three parts.
    """
    parts = []
    for part in str(version).split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(parts + [0] * (3 - len(parts)))


def require(package, minimum, feature, installed=None):
    """Raises ``ImportError`` if ``package`` is older than ``minimum``.

    Args:
        package: Import name: ``"keras"``, ``"tensorflow"``, ``"tf_keras"``,
            ``"jax"`` or ``"torch"``.
        minimum: The oldest version that works, e.g. ``"3.8.0"``.
        feature: What needs it, for the message (e.g. ``"keras_reg"``).
        installed: The installed version; read from the imported package when
            omitted (a package that is not imported is not checked).

    Raises:
        ImportError: The installed version is older than ``minimum``.

    Example:
        >>> require("keras", "3.8.0", "keras_reg", installed="3.15.0")
    """
    if installed is None:
        module = sys.modules.get(package)
        installed = getattr(module, "__version__", None)
        if installed is None:
            return
    if version_tuple(installed) < version_tuple(minimum):
        pip_name = _PIP_NAMES.get(package, package)
        raise ImportError(
            f"{feature} needs {pip_name} >= {minimum}, but {pip_name} {installed} "
            f"is installed. Upgrade it: pip install -U '{pip_name}>={minimum}'."
        )


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


def check_installed_versions():
    """Checks Keras 3, its backend and tf_keras against ``MINIMUM_VERSIONS``.

    The framework of the active Keras backend is checked, and TensorFlow and
    tf_keras when tf_keras is imported; a framework that is merely installed
    is not.

    Raises:
        ImportError: Naming the package that is too old and the version needed.
    """
    require("keras", MINIMUM_VERSIONS["keras"], "keras_reg", keras.__version__)
    packages = [keras.backend.backend()]
    if "tf_keras" in sys.modules:
        packages += ["tensorflow", "tf_keras"]
    for package in packages:
        if package in MINIMUM_VERSIONS:
            require(package, MINIMUM_VERSIONS[package], "keras_reg")


check_installed_versions()
