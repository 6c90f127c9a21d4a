"""keras_mtl: multi-task learning for Keras 3.

Architectures as Keras layers (`keras_mtl.layers`), loss-weighting and
gradient-manipulation methods (`keras_mtl.balancers`), and `MultiTaskModel`,
a `keras.Model` whose training step balances the tasks.

Every submodule loads with the package: importing them registers the classes
for Keras serialisation, so `import keras_mtl` is all that
`keras.saving.load_model` needs.
"""

from keras_mtl import balancers as balancers
from keras_mtl import callbacks as callbacks
from keras_mtl import datasets as datasets
from keras_mtl import gradients as gradients
from keras_mtl import layers as layers
from keras_mtl import metrics as metrics
from keras_mtl import models as models
from keras_mtl.models.multi_task_model import MultiTaskModel as MultiTaskModel

__version__ = "0.1.0"

__all__ = [
    "MultiTaskModel",
    "balancers",
    "callbacks",
    "datasets",
    "gradients",
    "layers",
    "metrics",
    "models",
]
