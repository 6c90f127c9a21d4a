"""keras_mtl: multi-task learning for Keras 3.

Architectures as Keras layers (`keras_mtl.layers`), loss-weighting and
gradient-manipulation methods (`keras_mtl.balancers`), and `MultiTaskModel`,
a `keras.Model` whose training step balances the tasks.

Submodules load on first use, so that the `keras-mtl` command can configure
TensorFlow's logging before TensorFlow starts.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("balancers", "callbacks", "datasets", "gradients", "layers", "metrics", "models")
__all__ = ["MultiTaskModel", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_mtl.{name}")
    if name == "MultiTaskModel":
        from keras_mtl.models.multi_task_model import MultiTaskModel

        return MultiTaskModel
    raise AttributeError(f"module 'keras_mtl' has no attribute {name!r}")


def __dir__():
    return sorted([*__all__, "__version__"])
