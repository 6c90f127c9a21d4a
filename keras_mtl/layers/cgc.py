"""Customized Gate Control (CGC): shared and task-specific experts with task gates."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl._validation import (
    check_bool,
    check_positive_int,
    check_rate,
    check_units,
    is_integer,
)
from keras_mtl.layers.expert_bank import ExpertBank, mix_experts
from keras_mtl.layers.gate import check_gate, make_gate


def check_task_experts(num_task_experts, num_tasks: int) -> tuple[int, ...]:
    """Validates `num_task_experts` (an int, or one positive int per task).

    Args:
        num_task_experts: a positive integer (the same count for every task)
            or a sequence of one positive integer per task.
        num_tasks: the number of tasks.

    Returns:
        A tuple of `num_tasks` Python ints.

    Raises:
        ValueError: for a non-positive count or a sequence of the wrong length.

    Example:

    >>> from keras_mtl.layers.cgc import check_task_experts
    >>> check_task_experts(2, 3), check_task_experts([1, 4], 2)
    ((2, 2, 2), (1, 4))
    >>> check_task_experts([1], 2)
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `num_task_experts`, expected a positive integer or one positive integer per task (num_tasks=2). Received: num_task_experts=[1]
    """
    if is_integer(num_task_experts):
        counts = (num_task_experts,) * num_tasks
    else:
        try:
            counts = tuple(num_task_experts)
        except TypeError:
            counts = ()
    if len(counts) != num_tasks or any(not is_integer(c) or c < 1 for c in counts):
        raise ValueError(
            "Received an invalid value for `num_task_experts`, expected a positive integer or "
            f"one positive integer per task (num_tasks={num_tasks}). "
            f"Received: num_task_experts={num_task_experts!r}"
        )
    return tuple(int(c) for c in counts)


PER_TASK_HINT = (
    "For one input per task, use `CGC`, which accepts a list of num_tasks + 1 tensors (task "
    "inputs, then the shared input)."
)


def _is_shape_list(input_shape) -> bool:
    return bool(input_shape) and isinstance(input_shape[0], list | tuple)


def check_one_input(layer, inputs, hint: str = "") -> None:
    """Validates that a layer read by every task received one tensor.

    Without this check a list of inputs fails deep inside Keras with an
    unreadable shape error.

    Args:
        layer: the layer called, named in the message.
        inputs: the call's inputs, or their shape (in `build`).
        hint: sentence appended to the message, e.g. the layer to use
            instead.

    Raises:
        ValueError: for a list or tuple of tensors or shapes.

    Example:

    >>> import keras, keras_mtl
    >>> from keras_mtl.layers.cgc import check_one_input
    >>> layer = keras_mtl.layers.MMoE(2, 2, name="mmoe")
    >>> check_one_input(layer, (None, 5))
    >>> check_one_input(layer, [(None, 5), (None, 5)])
    Traceback (most recent call last):
    ...
    ValueError: `MMoE` (layer 'mmoe') expects one input tensor, read by every task. Received: a list of 2 inputs.
    """
    # A shape is a tuple of ints and Nones; a list of inputs holds tensors or shapes.
    if isinstance(inputs, list | tuple) and not all(d is None or is_integer(d) for d in inputs):
        message = (
            f"`{type(layer).__name__}` (layer '{layer.name}') expects one input tensor, read by "
            f"every task. Received: a list of {len(inputs)} inputs."
        )
        raise ValueError(f"{message} {hint}" if hint else message)


def mixed_shape(experts_shape) -> tuple:
    """The shape of `mix_experts`'s output for experts of shape `experts_shape`.

    Args:
        experts_shape: `(batch, ..., E, units)`.

    Returns:
        `(batch, ..., units)`.

    Example:

    >>> from keras_mtl.layers.cgc import mixed_shape
    >>> mixed_shape((None, 7, 3, 4))
    (None, 7, 4)
    """
    shape = tuple(experts_shape)
    return shape[:-2] + shape[-1:]


def check_expert_shape(layer, input_shape, experts_shape) -> None:
    """Validates that a mixture layer's experts keep their input's leading axes.

    The gate weights `(batch, ..., E)` keep every axis of the input but the
    last, and are broadcast against the experts' outputs. An expert that
    drops or resizes an axis (an RNN that returns its last state) would be
    broadcast wrongly: silently for a batch of one, or one as long as the
    sequence.

    Args:
        layer: the layer being built, named in the message.
        input_shape: the shape the experts and the gate read.
        experts_shape: the expert bank's output shape for it,
            `(batch, ..., E, units)`.

    Raises:
        ValueError: when the experts' leading axes differ from the input's.

    Example:

    >>> import keras_mtl
    >>> from keras_mtl.layers.cgc import check_expert_shape
    >>> layer = keras_mtl.layers.MMoE(2, 2, name="mmoe")
    >>> check_expert_shape(layer, (None, 7, 5), (None, 7, 2, 4))
    >>> check_expert_shape(layer, (None, 7, 5), (None, 2, 4))
    Traceback (most recent call last):
    ...
    ValueError: Received an invalid value for `expert`, expected a layer that keeps the axes of its input but the last, (None, 7), as the gates of `MMoE` (layer 'mmoe') do. Received: an expert with output shape (None, 4) for inputs of shape (None, 7, 5)
    """
    leading, kept = tuple(input_shape)[:-1], tuple(experts_shape)[:-2]
    if len(kept) != len(leading) or any(
        a is not None and b is not None and a != b for a, b in zip(leading, kept, strict=True)
    ):
        raise ValueError(
            "Received an invalid value for `expert`, expected a layer that keeps the axes of its "
            f"input but the last, {leading}, as the gates of `{type(layer).__name__}` (layer "
            f"'{layer.name}') do. Received: an expert with output shape {mixed_shape(experts_shape)} "
            f"for inputs of shape {tuple(input_shape)}"
        )


def mixture_output_spec(output_shape, dtype, return_gate_weights: bool):
    """Symbolic outputs of a mixture layer (MMoE, CGC) from its output shape.

    Keras's default `compute_output_spec` would give every output the layer's
    compute dtype; the mixed outputs have the experts' dtype (which a user
    `expert` layer sets) and the gate weights are float32.

    Args:
        output_shape: the layer's `compute_output_shape` result: a list of
            output shapes, or the pair `(output shapes, gate weight shapes)`.
        dtype: the experts' output dtype.
        return_gate_weights: whether `output_shape` is such a pair.

    Returns:
        The same structure with a `keras.KerasTensor` for each shape.

    Example:

    >>> from keras_mtl.layers.cgc import mixture_output_spec
    >>> outputs, weights = mixture_output_spec(([(None, 4)], [(None, 3)]), "float16", True)
    >>> outputs[0].dtype, weights[0].dtype, tuple(weights[0].shape)
    ('float16', 'float32', (None, 3))
    """
    if return_gate_weights:
        shapes, weight_shapes = output_shape
        weights = [keras.KerasTensor(shape, dtype="float32") for shape in weight_shapes]
        return [keras.KerasTensor(shape, dtype=dtype) for shape in shapes], weights
    return [keras.KerasTensor(shape, dtype=dtype) for shape in output_shape]


@keras.saving.register_keras_serializable(package="keras_mtl")
class CGC(keras.layers.Layer):
    """Customized Gate Control: shared experts plus experts owned by each task.

    Task t mixes its own experts and the shared experts with a gate that
    reads the task's input: `y_t = g_t(x_t) . [E_t(x_t), E_s(x_s)]` (gate
    weights ordered as the task's experts, then the shared experts, as in
    the paper). With `shared_output=True` the layer also returns the shared
    path of a PLE extraction level: a gate reading the shared input mixes
    all experts (every task's, in task order, then the shared ones). This is
    how `PLE` stacks CGC levels.

    While `_gate_recorder` is set (to a callable, by
    `keras_mtl.callbacks.GateMonitor`), each eager call passes it
    `(gate_weights, masks)`: the task gates' weights and the task inputs'
    padding masks (or `None`).

    Args:
        num_tasks: number of tasks, a positive integer.
        num_shared_experts: number of shared experts, a positive integer.
        num_task_experts: positive integer (the same for every task) or one
            positive integer per task.
        expert_units: positive integer or sequence, widths of each expert's
            layers.
        expert_activation: activation of the expert layers.
        expert_dropout: dropout rate in `[0, 1)` inside the experts.
        expert: `None`, or a Keras layer (or layer config) cloned for every
            expert instead of the built-in MLP.
        gate: `"softmax"` (`Gate`) or `"dselect_k"` (`DSelectK`; its `k` must
            not exceed any gate's number of experts).
        gate_kwargs: extra arguments of each gate (see `MMoE`).
        shared_output: whether to add the shared gate and output.
        return_gate_weights: whether to also return the gate weights.
        kernel_initializer: initializer of the expert kernels.
        kernel_regularizer: regularizer of the expert kernels.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: one tensor `(batch, ..., features)` read by every task and
            the shared experts, or a list of `num_tasks + 1` tensors (the
            task inputs in task order, then the shared input). A padding
            mask passes on: task t's output keeps task t's input mask,
            the shared output the shared input's.
        training: whether dropout and gate regularisers are active.
        mask: the inputs' padding mask, which Keras passes on its own.

    Returns:
        A list of `num_tasks` tensors `(batch, ..., expert_units[-1])` in task
        order, followed by the shared output when `shared_output=True`. With
        `return_gate_weights=True` the tuple `(outputs, gate_weights)`, one
        float32 weight tensor per output.

    Raises:
        ValueError: for non-positive task or expert counts, a
            `num_task_experts` list whose length is not `num_tasks`, bad
            expert or gate arguments (an unknown `gate_kwargs` entry
            included), a list input of the wrong length, or (when called) an
            `expert` that does not keep the input's axes but the last.

    Example:

    >>> import keras, keras_mtl
    >>> x = keras.Input((10,))
    >>> h = keras_mtl.layers.CGC(num_tasks=2, num_shared_experts=2, num_task_experts=1,
    ...                          expert_units=(8,))(x)
    >>> [tuple(t.shape) for t in h]
    [(None, 8), (None, 8)]

    References:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task
        Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
    """

    def __init__(
        self,
        num_tasks: int,
        num_shared_experts: int = 1,
        num_task_experts=1,
        expert_units=(64,),
        expert_activation="relu",
        expert_dropout: float = 0.0,
        expert=None,
        gate: str = "softmax",
        gate_kwargs: dict | None = None,
        shared_output: bool = False,
        return_gate_weights: bool = False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.num_shared_experts = check_positive_int("num_shared_experts", num_shared_experts)
        self.num_task_experts = check_task_experts(num_task_experts, num_tasks)
        expert_units = check_units("expert_units", expert_units)
        check_rate("expert_dropout", expert_dropout)
        self.gate, self.gate_kwargs = check_gate(gate, gate_kwargs)
        self.shared_output = check_bool("shared_output", shared_output)
        self.return_gate_weights = check_bool("return_gate_weights", return_gate_weights)

        def bank(count, name):
            return ExpertBank(
                count,
                units=expert_units,
                activation=expert_activation,
                dropout=expert_dropout,
                expert=expert,
                kernel_initializer=kernel_initializer,
                kernel_regularizer=kernel_regularizer,
                dtype=self.dtype_policy,
                name=name,
            )

        self.shared_experts = bank(self.num_shared_experts, "shared_experts")
        self.task_experts = [
            bank(count, f"task_{t}_experts") for t, count in enumerate(self.num_task_experts)
        ]
        self.gates = [
            make_gate(
                self.gate,
                count + self.num_shared_experts,
                self.gate_kwargs,
                f"gate_{t}",
                self.dtype_policy,
            )
            for t, count in enumerate(self.num_task_experts)
        ]
        self.shared_gate = (
            make_gate(
                self.gate,
                sum(self.num_task_experts) + self.num_shared_experts,
                self.gate_kwargs,
                "shared_gate",
                self.dtype_policy,
            )
            if self.shared_output
            else None
        )
        self._gate_recorder = None

    def _split(self, inputs):
        if isinstance(inputs, list | tuple):
            if len(inputs) != self.num_tasks + 1:
                raise ValueError(
                    f"`{type(self).__name__}` expects one tensor or a list of num_tasks + 1 = "
                    f"{self.num_tasks + 1} tensors (task inputs, then the shared input). "
                    f"Received: a list of {len(inputs)} inputs"
                )
            return list(inputs[:-1]), inputs[-1]
        return [inputs] * self.num_tasks, inputs

    def build(self, input_shape):
        if _is_shape_list(input_shape):
            task_shapes, shared_shape = self._split(list(input_shape))
        else:
            task_shapes, shared_shape = [input_shape] * self.num_tasks, input_shape
        shared_shape = tuple(shared_shape)
        self.shared_experts.build(shared_shape)
        check_expert_shape(
            self, shared_shape, self.shared_experts.compute_output_shape(shared_shape)
        )
        for shape, bank, gate in zip(task_shapes, self.task_experts, self.gates, strict=True):
            bank.build(tuple(shape))
            gate.build(tuple(shape))
            check_expert_shape(self, shape, bank.compute_output_shape(tuple(shape)))
        if self.shared_gate is not None:
            self.shared_gate.build(tuple(shared_shape))

    def call(self, inputs, training=None, mask=None):
        task_inputs, shared_input = self._split(inputs)
        shared = self.shared_experts(shared_input, training=training)
        own = [
            bank(x, training=training)
            for bank, x in zip(self.task_experts, task_inputs, strict=True)
        ]
        outputs, weights = [], []
        for t, x in enumerate(task_inputs):
            w = self.gates[t](x, training=training)
            outputs.append(mix_experts(w, ops.concatenate([own[t], shared], axis=-2)))
            weights.append(w)
        if self._gate_recorder is not None:
            # The mask has the structure of the inputs.
            self._gate_recorder((list(weights), self._split(mask)[0]))
        if self.shared_gate is not None:
            w = self.shared_gate(shared_input, training=training)
            outputs.append(mix_experts(w, ops.concatenate([*own, shared], axis=-2)))
            weights.append(w)
        if self.return_gate_weights:
            return outputs, weights
        return outputs

    def compute_output_shape(self, input_shape):
        if _is_shape_list(input_shape):
            task_shapes, shared_shape = self._split([tuple(s) for s in input_shape])
        else:
            task_shapes, shared_shape = [tuple(input_shape)] * self.num_tasks, tuple(input_shape)
        outputs = [
            mixed_shape(bank.compute_output_shape(shape))
            for bank, shape in zip(self.task_experts, task_shapes, strict=True)
        ]
        weights = [
            gate.compute_output_shape(shape)
            for gate, shape in zip(self.gates, task_shapes, strict=True)
        ]
        if self.shared_gate is not None:
            outputs.append(mixed_shape(self.shared_experts.compute_output_shape(shared_shape)))
            weights.append(self.shared_gate.compute_output_shape(shared_shape))
        return (outputs, weights) if self.return_gate_weights else outputs

    def compute_output_spec(self, inputs, training=None, mask=None):
        _, shared_input = self._split(inputs)
        dtype = self.shared_experts.compute_output_spec(shared_input).dtype
        if isinstance(inputs, list | tuple):
            shape = [tuple(x.shape) for x in inputs]
        else:
            shape = tuple(inputs.shape)
        return mixture_output_spec(
            self.compute_output_shape(shape), dtype, self.return_gate_weights
        )

    def compute_mask(self, inputs, mask=None):
        # Acts per position: task t's outputs keep task t's input mask, the
        # shared output the shared input's.
        if mask is None or (isinstance(mask, list | tuple) and all(m is None for m in mask)):
            return None
        task_masks, shared_mask = self._split(mask)
        masks = task_masks + ([shared_mask] if self.shared_output else [])
        return (masks, list(masks)) if self.return_gate_weights else masks

    def gate_weights(self, inputs, training: bool = False) -> list:
        """The task gates' weights for `inputs` (a list of `(batch, ..., E_t)`)."""
        task_inputs, _ = self._split(inputs)
        return [gate(x, training=training) for gate, x in zip(self.gates, task_inputs, strict=True)]

    def get_config(self):
        config = super().get_config()
        bank = self.shared_experts.get_config()
        config.update(
            {
                "num_tasks": self.num_tasks,
                "num_shared_experts": self.num_shared_experts,
                "num_task_experts": list(self.num_task_experts),
                "expert_units": bank["units"],
                "expert_activation": bank["activation"],
                "expert_dropout": bank["dropout"],
                "expert": bank["expert"],
                "gate": self.gate,
                "gate_kwargs": self.gate_kwargs,
                "shared_output": self.shared_output,
                "return_gate_weights": self.return_gate_weights,
                "kernel_initializer": bank["kernel_initializer"],
                "kernel_regularizer": bank["kernel_regularizer"],
            }
        )
        return config
