"""Multi-task evaluation metrics."""

# -- delta_m and helpers (issue 6) --
from keras_mtl.metrics.delta_m import delta_m as delta_m
from keras_mtl.metrics.delta_m import delta_m_per_task as delta_m_per_task
