"""Multi-task models."""

from keras_mtl.models.multi_task_model import MultiTaskModel as MultiTaskModel
