"""Softmax gate of a mixture of experts."""

from __future__ import annotations

import inspect

import keras
import numpy as np
from keras import ops

from keras_mtl._validation import check_bool, check_number, check_positive_int, check_rate
from keras_mtl.layers.expert_bank import fresh_initializer

GATE_TYPES = ("softmax", "dselect_k")
# Arguments that `make_gate` passes itself, so `gate_kwargs` must not repeat them.
GATE_RESERVED_ARGS = ("num_experts", "name", "dtype")


def softmax_last_axis(logits):
    """Softmax over the last axis, written out because `ops.softmax` warns on
    an axis of size 1 (one expert, or DSelect-k with k = 1).

    Args:
        logits: tensor; its batch may be empty.

    Returns:
        Tensor like `logits`, non-negative and summing to 1 over the last
        axis.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.layers.gate import softmax_last_axis
    >>> out = softmax_last_axis(np.array([[0.0, np.log(3.0)], [5.0, 5.0]], "float32"))
    >>> np.round(np.asarray(out, dtype=float), 6).tolist()
    [[0.25, 0.75], [0.5, 0.5]]
    >>> np.asarray(softmax_last_axis(np.array([[-7.0]], "float32"))).tolist()
    [[1.0]]
    >>> tuple(softmax_last_axis(np.zeros((0, 3), "float32")).shape)
    (0, 3)
    """
    # Without `initial`, the TensorFlow backend's eager `max` rejects an empty
    # batch; subtracting the row max keeps `exp` finite for large logits.
    row_max = ops.max(logits, axis=-1, keepdims=True, initial=float("-inf"))
    exp = ops.exp(logits - row_max)
    return exp / ops.sum(exp, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_mtl")
class Gate(keras.layers.Layer):
    """Maps a gate input to one weight per expert with a softmax.

    `weights = softmax(dropout(W x + b) / temperature)` over the last axis.
    The weights are computed in float32 (also under mixed precision) so that
    they sum to 1 up to float32 rounding.

    Args:
        num_experts: number of experts E, a positive integer.
        temperature: positive float; above 1 flattens the weights, below 1
            sharpens them.
        dropout: dropout rate in `[0, 1)` applied to the logits in training.
        use_bias: whether the logits have a bias (the MMoE paper's gate,
            `softmax(W x)`, has none).
        kernel_initializer: initializer of the gate kernel.
        kernel_regularizer: regularizer of the gate kernel.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, ..., features)`; its padding mask,
            if any, is passed on to every output.
        training: whether dropout is active.

    Returns:
        Float32 tensor of shape `(batch, ..., E)` with non-negative entries
        summing to 1 over the last axis.

    Raises:
        ValueError: for a non-positive `num_experts` or `temperature`, or a
            `dropout` outside `[0, 1)`.

    Example:

    >>> import numpy as np, keras_mtl
    >>> gate = keras_mtl.layers.Gate(num_experts=4, temperature=2.0)
    >>> weights = np.asarray(gate(np.ones((3, 5), "float32")))
    >>> weights.shape, bool(np.allclose(weights.sum(-1), 1.0))
    ((3, 4), True)

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
    """

    def __init__(
        self,
        num_experts: int,
        temperature: float = 1.0,
        dropout: float = 0.0,
        use_bias: bool = False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Acts per position: a padding mask passes through unchanged.
        self.supports_masking = True
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.temperature = check_number(
            "temperature", temperature, "a positive float", lambda v: v <= 0
        )
        self.dropout = check_rate("dropout", dropout)
        self.use_bias = check_bool("use_bias", use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.dense = keras.layers.Dense(
            self.num_experts,
            use_bias=self.use_bias,
            kernel_initializer=fresh_initializer(self.kernel_initializer),
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name="logits",
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout) if self.dropout else None

    def build(self, input_shape):
        self.dense.build(tuple(input_shape))

    def call(self, inputs, training=None):
        logits = self.dense(inputs)
        if self.dropout_layer is not None:
            logits = self.dropout_layer(logits, training=training)
        logits = ops.cast(logits, "float32") / self.temperature
        return softmax_last_axis(logits)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_experts,)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "temperature": self.temperature,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


def make_gate(gate: str, num_experts: int, gate_kwargs: dict | None, name: str, dtype):
    """Builds the gate named by `gate` (`"softmax"` or `"dselect_k"`).

    Args:
        gate: `"softmax"` for `Gate` or `"dselect_k"` for `DSelectK`.
        num_experts: number of experts the gate weighs.
        gate_kwargs: extra constructor arguments of the gate (for
            `"dselect_k"` at least `k`).
        name: layer name.
        dtype: dtype policy.

    Returns:
        A `Gate` or `DSelectK` layer.

    Raises:
        ValueError: for an unknown `gate`.

    Example:

    >>> from keras_mtl.layers.gate import make_gate
    >>> gate = make_gate("dselect_k", 8, {"k": 2}, name="g", dtype="float32")
    >>> type(gate).__name__, gate.num_experts, gate.k
    ('DSelectK', 8, 2)
    >>> type(make_gate("softmax", 4, None, name="g", dtype="float32")).__name__
    'Gate'
    """
    kwargs = dict(gate_kwargs or {})
    if gate == "softmax":
        return Gate(num_experts, name=name, dtype=dtype, **kwargs)
    if gate == "dselect_k":
        from keras_mtl.layers.dselect_k import DSelectK

        return DSelectK(num_experts, name=name, dtype=dtype, **kwargs)
    raise ValueError(
        f"Received an invalid value for `gate`, expected one of {list(GATE_TYPES)}. "
        f"Received: gate={gate!r}"
    )


def gate_arguments(gate: str) -> list[str]:
    """The arguments that `gate_kwargs` may set for the gate named `gate`.

    They are the gate class's constructor arguments and those of
    `keras.layers.Layer` (e.g. `trainable`), less the ones the layer sets
    itself (`num_experts`, `name`, `dtype`).

    Args:
        gate: `"softmax"` or `"dselect_k"`.

    Returns:
        The argument names, the gate's own first.

    Example:

    >>> from keras_mtl.layers.gate import gate_arguments
    >>> gate_arguments("softmax")[:5]
    ['temperature', 'dropout', 'use_bias', 'kernel_initializer', 'kernel_regularizer']
    """
    if gate == "dselect_k":
        from keras_mtl.layers.dselect_k import DSelectK as gate_class
    else:
        gate_class = Gate
    names = []
    for init in (gate_class.__init__, keras.layers.Layer.__init__):
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if parameter.name not in ("self", *GATE_RESERVED_ARGS, *names):
                names.append(parameter.name)
    return names


def check_gate(gate, gate_kwargs) -> tuple[str, dict]:
    """Validates a `gate` name and its `gate_kwargs` (used by MMoE, CGC, PLE).

    Args:
        gate: `"softmax"` or `"dselect_k"`.
        gate_kwargs: `None` or a dict of gate constructor arguments (for
            `"dselect_k"` it must hold `k`).

    Returns:
        `(gate, kwargs)` with `kwargs` a new dict (empty for `None`).

    Raises:
        ValueError: for an unknown `gate`, `gate_kwargs` that is not a dict,
            that sets an argument the layer sets itself (`num_experts`,
            `name`, `dtype`) or one the gate does not have (see
            `gate_arguments`), or `"dselect_k"` without `k`.

    Example:

    >>> from keras_mtl.layers.gate import check_gate
    >>> check_gate("softmax", None), check_gate("dselect_k", {"k": 2})
    (('softmax', {}), ('dselect_k', {'k': 2}))
    >>> check_gate("dselect_k", {})
    Traceback (most recent call last):
    ...
    ValueError: `gate='dselect_k'` needs the number of selected experts in `gate_kwargs`, e.g. gate_kwargs={'k': 2}. Received: gate_kwargs={}
    >>> check_gate("softmax", {"num_experts": 4})
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `gate_kwargs`, expected gate arguments without ['num_experts'], which the layer sets itself. Received: gate_kwargs={'num_experts': 4}
    >>> check_gate("softmax", {"temprature": 2.0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `gate_kwargs`, expected arguments of the 'softmax' gate among ['temperature', ...]. Unknown: ['temprature']. Received: gate_kwargs={'temprature': 2.0}
    """
    if gate not in GATE_TYPES:
        raise ValueError(
            f"Received an invalid value for `gate`, expected one of {list(GATE_TYPES)}. "
            f"Received: gate={gate!r}"
        )
    if gate_kwargs is not None and not isinstance(gate_kwargs, dict):
        raise ValueError(
            "Received an invalid value for `gate_kwargs`, expected None or a dict of gate "
            f"arguments. Received: gate_kwargs={gate_kwargs!r}"
        )
    # NumPy scalars as Python numbers: the config must dump to JSON.
    kwargs = {
        k: v.item() if isinstance(v, np.generic) else v for k, v in (gate_kwargs or {}).items()
    }
    reserved = [key for key in GATE_RESERVED_ARGS if key in kwargs]
    if reserved:
        raise ValueError(
            f"Received an invalid value for `gate_kwargs`, expected gate arguments without "
            f"{reserved}, which the layer sets itself. Received: gate_kwargs={gate_kwargs!r}"
        )
    # Caught here rather than by Keras when the gates are built, whose message
    # names neither the layer's argument nor the valid keys.
    valid = gate_arguments(gate)
    unknown = [key for key in kwargs if key not in valid]
    if unknown:
        raise ValueError(
            f"Received an invalid value for `gate_kwargs`, expected arguments of the {gate!r} "
            f"gate among {valid}. Unknown: {unknown}. Received: gate_kwargs={gate_kwargs!r}"
        )
    if gate == "dselect_k" and "k" not in kwargs:
        raise ValueError(
            "`gate='dselect_k'` needs the number of selected experts in `gate_kwargs`, e.g. "
            f"gate_kwargs={{'k': 2}}. Received: gate_kwargs={gate_kwargs!r}"
        )
    return gate, kwargs
