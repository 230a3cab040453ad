"""Checks a built wheel: its file list, then an install and a smoke run.

Usage: python scripts/check_wheel.py DIST_DIR VENV_PYTHON

DIST_DIR holds the wheel and the sdist made by ``python -m build``. The wheel
must hold the package only (no tests, notes, results, benchmarks or examples).
It is installed (without dependencies: VENV_PYTHON's environment already has a
framework) into the virtual environment of VENV_PYTHON, and a smoke run there,
from an empty temporary directory in isolated mode (so no source tree is on the
path), checks that keras_reg is imported from that environment, that every name
in ``keras_reg.__all__`` resolves, that the metadata version is
``keras_reg.__version__``, and that FGM trains one step.
"""

import glob
import os
import subprocess
import sys
import tempfile
import zipfile

SMOKE = r"""
import importlib.metadata, os, sys
import numpy as np
import keras_reg
from keras_reg._compat import keras

here = os.path.realpath(keras_reg.__file__)
assert here.startswith(os.path.realpath(sys.prefix)), here
missing = [name for name in keras_reg.__all__ if not hasattr(keras_reg, name)]
assert not missing, missing
assert importlib.metadata.version("keras_reg") == keras_reg.__version__
model = keras.Sequential([
    keras.Input((4,), dtype="int32"),
    keras.layers.Embedding(10, 3, name="emb"),
    keras.layers.GlobalAveragePooling1D(),
    keras.layers.Dense(2),
])
model.compile(
    optimizer="sgd",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
keras_reg.adversarial_training(model, "emb", epsilon=0.5)
before = model.get_layer("emb").get_weights()[0].copy()
x = np.arange(8, dtype="int32").reshape(2, 4) % 10
history = model.fit(x, np.array([0, 1]), epochs=1, verbose=0)
assert np.isfinite(history.history["loss"][0])
assert not np.allclose(model.get_layer("emb").get_weights()[0], before)
print(
    f"keras_reg {keras_reg.__version__} from {os.path.dirname(here)}: "
    f"{len(keras_reg.__all__)} public names, FGM trained one step on "
    f"Keras {keras.__version__} ({keras.backend.backend()})"
)
"""


def check_file_list(wheel):
    """Returns the wheel's names that are not part of the package."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    dist_info = os.path.basename(wheel).split("-")[0] + "-"
    stray = [
        name
        for name in names
        if not name.startswith("keras_reg/")
        and not (name.startswith(dist_info) and ".dist-info/" in name)
    ]
    if "keras_reg/__init__.py" not in names:
        stray.append("(keras_reg/__init__.py is missing)")
    return names, stray


def main(dist_dir, python):
    """Checks the wheel in ``dist_dir`` with the interpreter ``python``."""
    wheels = glob.glob(os.path.join(dist_dir, "keras_reg-*-py3-none-any.whl"))
    sdists = glob.glob(os.path.join(dist_dir, "keras_reg-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.exit(f"expected one wheel and one sdist in {dist_dir}: {wheels} {sdists}")
    names, stray = check_file_list(wheels[0])
    if stray:
        sys.exit(f"the wheel holds files outside the package: {stray}")
    print(f"{os.path.basename(wheels[0])}: {len(names)} files, package only")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(
        pip + ["--no-deps", "--force-reinstall", wheels[0]], check=True, env=env
    )
    with tempfile.TemporaryDirectory() as empty:
        subprocess.run([python, "-I", "-c", SMOKE], check=True, cwd=empty, env=env)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
