"""Shared-bottom (hard parameter sharing) MLP trunk."""

from __future__ import annotations

import keras

from keras_mtl._validation import check_bool, check_rate, check_units
from keras_mtl.layers.expert_bank import fresh_initializer


@keras.saving.register_keras_serializable(package="keras_mtl")
class SharedBottom(keras.layers.Layer):
    """An MLP trunk shared by all tasks (hard parameter sharing).

    A stack of `Dense` layers, each optionally followed by batch
    normalisation, the activation and dropout. Applied to the last axis, so it
    works on inputs of any rank `(batch, ..., features)`.

    Args:
        units: positive integer or sequence of positive integers, the width of
            each hidden layer.
        activation: activation of each hidden layer.
        dropout: dropout rate in `[0, 1)` after each hidden layer.
        batch_norm: whether to apply batch normalisation before the
            activation.
        kernel_initializer: initializer of the kernels.
        kernel_regularizer: regularizer of the kernels.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, ..., features)`; its padding mask,
            if any, is passed on to the output, and batch normalisation
            takes its statistics over the unpadded positions only.
        training: whether dropout and batch normalisation are in training mode.

    Returns:
        Tensor of shape `(batch, ..., units[-1])`.

    Raises:
        ValueError: for empty or non-positive `units`, a `dropout` outside
            `[0, 1)` or a `batch_norm` that is not a bool.

    Example:

    >>> import keras, keras_mtl
    >>> x = keras.Input((8,))
    >>> h = keras_mtl.layers.SharedBottom(units=(16, 4), dropout=0.1)(x)
    >>> tuple(h.shape)
    (None, 4)

    References:
        Caruana, "Multitask Learning", Machine Learning 28, 1997.
    """

    def __init__(
        self,
        units=(64,),
        activation="relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Acts per position: a padding mask passes through unchanged.
        self.supports_masking = True
        self.units = check_units("units", units)
        self.dropout = check_rate("dropout", dropout)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.dense_layers = [
            keras.layers.Dense(
                u,
                # Each layer its own copy: a shared instance would start
                # equally shaped kernels with equal values.
                kernel_initializer=fresh_initializer(self.kernel_initializer),
                kernel_regularizer=self.kernel_regularizer,
                use_bias=not self.batch_norm,
                dtype=self.dtype_policy,
                name=f"dense_{i}",
            )
            for i, u in enumerate(self.units)
        ]
        self.norm_layers = (
            [
                keras.layers.BatchNormalization(dtype=self.dtype_policy, name=f"batch_norm_{i}")
                for i in range(len(self.units))
            ]
            if self.batch_norm
            else []
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout) if self.dropout else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        for i, dense in enumerate(self.dense_layers):
            dense.build(shape)
            shape = shape[:-1] + (self.units[i],)
            if self.batch_norm:
                self.norm_layers[i].build(shape)

    def call(self, inputs, training=None, mask=None):
        x = inputs
        for i, dense in enumerate(self.dense_layers):
            x = dense(x)
            if self.batch_norm:
                # Batch statistics over the unpadded positions only.
                x = self.norm_layers[i](x, training=training, mask=mask)
            x = self.activation(x)
            if self.dropout_layer is not None:
                x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": list(self.units),
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "batch_norm": self.batch_norm,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
