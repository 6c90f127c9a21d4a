"""Flattening per-variable gradients into rows of the Jacobian and back."""

import tensorflow as tf


def flatten(grads, variables) -> tf.Tensor:
    """Concatenates gradients into one float32 vector; `None` counts as zero.

    Args:
        grads: list of gradients (tensors, `IndexedSlices` or `None`).
        variables: the matching variables (for the shapes of `None` entries).

    Returns:
        A `(num_params,)` float32 tensor.
    """
    parts = []
    for g, v in zip(grads, variables, strict=True):
        if g is None:
            parts.append(tf.zeros([_size(v)], dtype=tf.float32))
        else:
            parts.append(tf.reshape(tf.cast(tf.convert_to_tensor(g), tf.float32), [-1]))
    return tf.concat(parts, axis=0)


def unflatten(vector, variables) -> list:
    """Splits a `(num_params,)` vector into tensors shaped and typed like `variables`.

    Args:
        vector: the flat vector.
        variables: the variables, in the order used by `flatten`.

    Returns:
        A list of tensors, one per variable.
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
