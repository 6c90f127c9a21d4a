"""Flattening per-variable gradients into rows of the Jacobian and back."""

import tensorflow as tf


def jacobian_rows(per_task, variables) -> tf.Tensor:
    """Stacks per-task gradient lists into a `(num_tasks, num_params)` float32 matrix.

    One concatenation of every task's flattened gradients, task-major, then a
    free reshape: building rows and stacking them copies the matrix twice, and
    TensorFlow's CPU stack kernel alone took 15-30 % of a T = 10 loop step.

    Args:
        per_task: one list of gradients (tensors, `IndexedSlices` or `None`
            for zero) per task, each matching `variables`.
        variables: the variables, for the shapes of `None` entries.

    Returns:
        A `(num_tasks, num_params)` float32 tensor, rows in task order, each
        row the variables' gradients flattened and concatenated in order.

    Example:

    >>> import tensorflow as tf
    >>> from keras_mtl.gradients.flatten import jacobian_rows
    >>> v = [tf.Variable([[1.0, 2.0]]), tf.Variable([3.0])]
    >>> jacobian_rows([[tf.ones((1, 2)), None], [None, tf.constant([5.0])]], v).numpy().tolist()
    [[1.0, 1.0, 0.0], [0.0, 0.0, 5.0]]
    """
    parts = [
        tf.zeros([_size(v)], tf.float32)
        if g is None
        else tf.reshape(tf.cast(tf.convert_to_tensor(g), tf.float32), [-1])
        for grads in per_task
        for g, v in zip(grads, variables, strict=True)
    ]
    return tf.reshape(tf.concat(parts, axis=0), [len(per_task), -1])


def unflatten(vector, variables) -> list:
    """Splits a `(num_params,)` vector into tensors shaped and typed like `variables`.

    Args:
        vector: the flat vector.
        variables: the variables, in the order used by `flatten`.

    Returns:
        A list of tensors, one per variable.

    Example:

    The inverse of `jacobian_rows` for one row:

    >>> import tensorflow as tf
    >>> from keras_mtl.gradients.flatten import unflatten
    >>> v = [tf.Variable([[1.0, 2.0]]), tf.Variable([3.0])]
    >>> [t.numpy().tolist() for t in unflatten(tf.constant([7.0, 8.0, 9.0]), v)]
    [[[7.0, 8.0]], [9.0]]
    """
    sizes = [_size(v) for v in variables]
    pieces = tf.split(vector, sizes) if len(sizes) > 1 else [vector]
    return [
        tf.cast(tf.reshape(p, v.shape), v.dtype) for p, v in zip(pieces, variables, strict=True)
    ]


def _size(variable) -> int:
    size = 1
    for d in variable.shape:
        size *= int(d)
    return size
