"""Per-task gradient engine (the only TensorFlow-specific package)."""

from keras_mtl.gradients.engine import GradientEngine as GradientEngine
