"""A bank of E experts evaluated together with stacked kernels."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl._validation import check_bool, check_positive_int, check_rate, check_units


def fresh_initializer(initializer):
    """A copy of a Keras initializer that draws its own values.

    Keras initializers return the same values on every call, so one instance
    shared by several weights of the same shape would make them equal. A copy
    rebuilt from the config gets a new seed (unless the user fixed one).

    Args:
        initializer: a `keras.initializers.Initializer`, or anything else
            Keras accepts as an initializer (a name, a callable).

    Returns:
        A new initializer built from `initializer`'s config, or
        `initializer` itself when it is not an `Initializer` instance.

    Example:

    >>> import keras, numpy as np
    >>> from keras_mtl.layers.expert_bank import fresh_initializer
    >>> init = keras.initializers.GlorotUniform()
    >>> bool(np.array_equal(init((3, 3)), init((3, 3))))
    True
    >>> bool(np.array_equal(init((3, 3)), fresh_initializer(init)((3, 3))))
    False
    >>> seeded = keras.initializers.GlorotUniform(seed=1)
    >>> bool(np.array_equal(seeded((3, 3)), fresh_initializer(seeded)((3, 3))))
    True
    >>> fresh_initializer("zeros")
    'zeros'
    """
    if isinstance(initializer, keras.initializers.Initializer):
        return initializer.__class__.from_config(initializer.get_config())
    return initializer


def _stacked_initializer(initializer, num_experts: int):
    """The initializer of a `(d_in, E, d_out)` kernel: each expert's slice
    `[:, e, :]` is drawn as the `(d_in, d_out)` kernel of a Dense layer.

    The values are drawn for the shape `(E, d_in, d_out)`, whose fans Keras
    computes as `E * d_in` and `E * d_out`; for fan-scaled initializers
    (Glorot, He, LeCun) the scale is multiplied by E to give each expert the
    variance of its own Dense kernel. Other initializers do not use the fans.
    """
    if isinstance(initializer, keras.initializers.VarianceScaling):
        initializer = keras.initializers.VarianceScaling(
            scale=initializer.scale * num_experts,
            mode=initializer.mode,
            distribution=initializer.distribution,
            seed=initializer.get_config().get("seed"),
        )
    else:
        initializer = fresh_initializer(initializer)

    def initialize(shape, dtype=None):
        fan_in, experts, width = shape
        return ops.transpose(initializer((experts, fan_in, width), dtype=dtype), (1, 0, 2))

    return initialize


def _clone_expert(template: keras.layers.Layer, name: str) -> keras.layers.Layer:
    # Inside `load_model`'s object-sharing scope, serialising the template's
    # inner layers again marks them as one shared object, and every clone of
    # a Sequential or functional expert would get the same layers.
    config = _without_shared_ids(template.get_config())
    config["name"] = name
    return template.__class__.from_config(config)


def _without_shared_ids(config):
    if isinstance(config, dict):
        return {k: _without_shared_ids(v) for k, v in config.items() if k != "shared_object_id"}
    if isinstance(config, list | tuple):
        return type(config)(_without_shared_ids(v) for v in config)
    return config


def mix_experts(weights, experts):
    """Mixes expert outputs with gate weights.

    Args:
        weights: `(batch, ..., E)` gate weights.
        experts: `(batch, ..., E, units)` expert outputs.

    Returns:
        `(batch, ..., units)`, the weighted sum over the experts, in the
        experts' dtype.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.layers.expert_bank import mix_experts
    >>> weights = np.array([[0.25, 0.75]], "float32")
    >>> experts = np.array([[[1.0, 2.0], [3.0, 4.0]]], "float32")
    >>> np.asarray(mix_experts(weights, experts)).tolist()
    [[2.5, 3.5]]
    """
    weights = ops.cast(weights, experts.dtype)
    return ops.sum(ops.expand_dims(weights, -1) * experts, axis=-2)


@keras.saving.register_keras_serializable(package="keras_mtl")
class ExpertBank(keras.layers.Layer):
    """E MLP experts that read the same input, computed as one batched op.

    Each hidden layer of the E experts is one stacked kernel of shape
    `(d_in, E, d_out)` (expert e's kernel is `kernel[:, e, :]`) and a bias
    `(E, d_out)`, instead of E separate `Dense` layers: the first layer is one
    matmul against the kernels laid side by side (the cost of one `Dense`
    layer with E times the units), the next layers one batched matmul over
    the experts. Every layer, the last included, is followed by the
    activation and dropout (as in `SharedBottom`). The experts act on the
    last axis, so any input rank works.

    A user-supplied `expert` layer (an instance or its serialized config)
    replaces the built-in MLP: the bank then holds E independent clones made
    with `from_config(get_config())` and stacks their outputs; the template
    itself is not used and `units`, `activation`, `dropout` and the
    initializers are ignored.

    Args:
        num_experts: number of experts E, a positive integer.
        units: positive integer or sequence of them, the width of each layer
            of an expert.
        activation: activation after each layer.
        dropout: dropout rate in `[0, 1)` after each layer.
        use_bias: whether the layers have biases.
        expert: `None`, a `keras.layers.Layer`, or a layer config as written
            by `keras.layers.serialize`, to use instead of the MLP.
        kernel_initializer: initializer of the kernels; fan-based
            initializers see the fans of one expert.
        bias_initializer: initializer of the biases.
        kernel_regularizer: regularizer of the kernels.
        bias_regularizer: regularizer of the biases.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, ..., features)`; its padding mask,
            if any, is passed on to the output (a user expert's own
            `compute_mask` decides, e.g. `None` for an RNN that returns
            only its last state).
        training: whether dropout is active.

    Returns:
        Tensor of shape `(batch, ..., E, units[-1])` (or the expert layer's
        output features in the last axis).

    Raises:
        ValueError: for a non-positive `num_experts`, bad `units`, a
            `dropout` outside `[0, 1)`, or an `expert` that is not a layer
            or a layer config.

    Example:

    >>> import numpy as np, keras_mtl
    >>> bank = keras_mtl.layers.ExpertBank(num_experts=3, units=(8, 4))
    >>> tuple(bank(np.ones((2, 5), "float32")).shape)
    (2, 3, 4)
    >>> tuple(bank(np.ones((2, 7, 5), "float32")).shape)
    (2, 7, 3, 4)

    References:
        Jacobs et al., "Adaptive Mixtures of Local Experts", Neural
        Computation 3, 1991. Ma et al., "Modeling Task Relationships in
        Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.
    """

    def __init__(
        self,
        num_experts: int,
        units=(64,),
        activation="relu",
        dropout: float = 0.0,
        use_bias: bool = True,
        expert=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Acts per position: a padding mask passes through unchanged.
        self.supports_masking = True
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.units = check_units("units", units)
        self.dropout = check_rate("dropout", dropout)
        if expert is not None and not isinstance(expert, keras.layers.Layer | dict):
            raise ValueError(
                "Received an invalid value for `expert`, expected None, a keras.layers.Layer "
                f"or a layer config dict. Received: expert={expert!r}"
            )
        self.activation = keras.activations.get(activation)
        self.use_bias = check_bool("use_bias", use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        if expert is None:
            self._expert_template = None
            self.experts = []
        else:
            template = keras.layers.deserialize(expert) if isinstance(expert, dict) else expert
            # Keep a serialized copy: the template object is never built or used.
            self._expert_template = keras.layers.serialize(template)
            self.experts = [_clone_expert(template, f"expert_{i}") for i in range(self.num_experts)]
        self.dropout_layer = keras.layers.Dropout(self.dropout) if self.dropout else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.experts:
            for expert in self.experts:
                expert.build(shape)
            return
        self.kernels, self.biases = [], []
        fan_in = shape[-1]
        for i, width in enumerate(self.units):
            self.kernels.append(
                self.add_weight(
                    name=f"kernel_{i}",
                    shape=(fan_in, self.num_experts, width),
                    initializer=_stacked_initializer(self.kernel_initializer, self.num_experts),
                    regularizer=self.kernel_regularizer,
                )
            )
            if self.use_bias:
                self.biases.append(
                    self.add_weight(
                        name=f"bias_{i}",
                        shape=(self.num_experts, width),
                        initializer=fresh_initializer(self.bias_initializer),
                        regularizer=self.bias_regularizer,
                    )
                )
            fan_in = width

    def call(self, inputs, training=None):
        if self.experts:
            return ops.stack([expert(inputs, training=training) for expert in self.experts], -2)
        rank = len(inputs.shape)
        # Rank-2 inputs skip the dynamic-shape reshapes, which cost ~10% here.
        leading = (-1,) if rank == 2 else ops.shape(inputs)[:-1]
        x = inputs if rank == 2 else ops.reshape(inputs, (-1, inputs.shape[-1]))
        deep = len(self.kernels) > 1
        for i, kernel in enumerate(self.kernels):
            fan_in, num_experts, width = kernel.shape
            if i == 0:
                # All experts read the same input: one (N, d) x (d, E * width)
                # matmul, as cheap as a Dense layer with E times the units.
                x = ops.matmul(x, ops.reshape(kernel, (fan_in, -1)))
                if self.use_bias:
                    x = x + ops.reshape(self.biases[0], (-1,))
                if deep:
                    # Experts-major layout (E, N, width) for the batched matmuls
                    # below; an einsum over "...ed,edh" is 10-20x slower in TF.
                    x = ops.transpose(ops.reshape(x, (-1, num_experts, width)), (1, 0, 2))
            else:
                x = ops.matmul(x, ops.transpose(kernel, (1, 0, 2)))
                if self.use_bias:
                    x = x + ops.expand_dims(self.biases[i], 1)
            x = self.activation(x)
            if self.dropout_layer is not None:
                x = self.dropout_layer(x, training=training)
        if deep:
            x = ops.transpose(x, (1, 0, 2))
        return ops.reshape(x, (*leading, self.num_experts, self.units[-1]))

    def compute_mask(self, inputs, mask=None):
        # A user expert may drop the masked axis (an RNN without sequences).
        if self.experts:
            return self.experts[0].compute_mask(inputs, mask)
        return mask

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.experts:
            out = self.experts[0].compute_output_spec(keras.KerasTensor(shape)).shape
            return tuple(out[:-1]) + (self.num_experts, out[-1])
        return shape[:-1] + (self.num_experts, self.units[-1])

    def compute_output_spec(self, inputs, training=None):
        # A user expert computes in its own dtype policy, not the bank's,
        # which Keras's default spec would give the output.
        if not self.experts:
            return keras.KerasTensor(self.compute_output_shape(inputs.shape), self.compute_dtype)
        out = self.experts[0].compute_output_spec(inputs)
        shape = tuple(out.shape[:-1]) + (self.num_experts, out.shape[-1])
        return keras.KerasTensor(shape, dtype=out.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "units": list(self.units),
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "expert": self._expert_template,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            }
        )
        return config
