"""Which library runs TensorFlow's matrix products on this machine."""

from __future__ import annotations

import functools

import tensorflow as tf


@functools.cache
def onednn_cpu_matmuls() -> bool:
    """Whether TensorFlow's matrix products run on the CPU through oneDNN.

    TensorFlow turns oneDNN on by default for CPUs with AVX-512 VNNI or BF16
    or AMX (`TF_ENABLE_ONEDNN_OPTS` overrides that choice) and uses Eigen
    otherwise; with a GPU visible, products run there. The CPU libraries
    favour different ways of forming a Gramian `J J^T` with few rows (see
    `keras_mtl.balancers.solvers.gramian`). TensorFlow exposes its choice
    only in a private module; without it this returns `False`, which keeps
    the Eigen path.

    Returns:
        `True` when oneDNN runs TensorFlow's matmuls and no GPU is visible.

    Example:

    >>> from keras_mtl.gradients.matmul_backend import onednn_cpu_matmuls
    >>> onednn_cpu_matmuls() in (True, False)
    True
    """
    if tf.config.list_logical_devices("GPU"):
        return False
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())
