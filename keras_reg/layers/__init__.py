"""Layers: `SpectralNormalization`, which divides a kernel by its spectral norm.

Registered for Keras serialisation under the ``keras_reg`` package.
"""

from keras_reg.layers.spectral_normalization import SpectralNormalization

__all__ = ["SpectralNormalization"]
