"""Regularisers that act inside a training step, and their installer.

The package is organised by family: ``core`` (the protocol, the installer,
schedules, perturbation sites, the export decorator), ``adversarial`` (FGM,
PGD, FreeLB, FreeFGM, VAT), ``penalties`` (gradient, parameter and input
penalties; noise), ``weight_space`` (SAM/ASAM, AWP, R-Drop) and ``multitask``
(loss balancing). Every module is imported here, so every class and installer
marked with `keras_reg.training.core.export.export` is public.
"""

import importlib
import pkgutil

from keras_reg.training.core import export as _export
from keras_reg.training.core.installer import install, installed_regularizer, remove
from keras_reg.training.core.regularizer import TrainingRegularizer

for _module in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)

globals().update(_export.public())

__all__ = ["TrainingRegularizer", "install", "installed_regularizer", "remove"]
__all__ += list(_export.public())
