"""Progressive Layered Extraction (PLE): stacked CGC extraction levels."""

from __future__ import annotations

import keras

from keras_mtl._validation import check_bool, check_positive_int, check_rate, check_units
from keras_mtl.layers.cgc import CGC, PER_TASK_HINT, check_one_input, check_task_experts
from keras_mtl.layers.gate import check_gate


@keras.saving.register_keras_serializable(package="keras_mtl")
class PLE(keras.layers.Layer):
    """A stack of `num_levels` CGC extraction levels.

    Level j has shared experts and experts per task. Its task gate t mixes
    task t's experts and the shared experts and reads task t's output of
    level j - 1; every level but the last also has a shared gate, reading the
    shared output of level j - 1, that mixes all of the level's experts and
    gives the shared input of level j + 1 (Tang et al., Sec. 4.3, eq. 5-6;
    LibMTL's PLE leaves this gate out). The first level reads the layer input
    for every path. `PLE(num_levels=1)` is `CGC` with the same arguments,
    weight for weight. Each level is a `CGC` (`shared_output=True` below the
    top), stored in `levels`.

    While `_gate_recorder` is set (to a callable, by
    `keras_mtl.callbacks.GateMonitor`), each eager call passes it
    `(gate_weights, masks)`: the top level's task gate weights and the
    input's padding mask (or `None`) per task.

    Args:
        num_tasks: number of tasks, a positive integer.
        num_levels: number of extraction levels, a positive integer.
        num_shared_experts: shared experts per level, a positive integer.
        num_task_experts: experts per task and level, a positive integer or
            one per task.
        expert_units: positive integer or sequence, widths of each expert's
            layers (the same at every level).
        expert_activation: activation of the expert layers.
        expert_dropout: dropout rate in `[0, 1)` inside the experts.
        expert: `None`, or a Keras layer (or layer config) cloned for every
            expert; it must accept its own output width at levels above the
            first.
        gate: `"softmax"` or `"dselect_k"`.
        gate_kwargs: extra arguments of each gate (see `MMoE`).
        return_gate_weights: whether to also return the top level's task
            gate weights.
        kernel_initializer: initializer of the expert kernels.
        kernel_regularizer: regularizer of the expert kernels.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, ..., features)`; its padding mask,
            if any, is passed on to every output.
        training: whether dropout and gate regularisers are active.
        mask: the inputs' padding mask, which Keras passes on its own.

    Returns:
        A list of `num_tasks` tensors `(batch, ..., expert_units[-1])` in task
        order; with `return_gate_weights=True` the tuple
        `(outputs, gate_weights)` with the top level's task gate weights.

    Raises:
        ValueError: for non-positive `num_tasks`, `num_levels` or expert
            counts, a `num_task_experts` list whose length is not
            `num_tasks`, bad expert or gate arguments (an unknown
            `gate_kwargs` entry included), or (when called) a list of inputs
            or an `expert` that does not keep the input's axes but the last.

    Example:

    >>> import keras, keras_mtl
    >>> x = keras.Input((10,))
    >>> h = keras_mtl.layers.PLE(num_tasks=3, num_levels=2, expert_units=(8,))(x)
    >>> [tuple(t.shape) for t in h]
    [(None, 8), (None, 8), (None, 8)]

    References:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task
        Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
    """

    def __init__(
        self,
        num_tasks: int,
        num_levels: int = 2,
        num_shared_experts: int = 1,
        num_task_experts=1,
        expert_units=(64,),
        expert_activation="relu",
        expert_dropout: float = 0.0,
        expert=None,
        gate: str = "softmax",
        gate_kwargs: dict | None = None,
        return_gate_weights: bool = False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        self.num_levels = check_positive_int("num_levels", num_levels)
        self.num_shared_experts = check_positive_int("num_shared_experts", num_shared_experts)
        self.num_task_experts = check_task_experts(num_task_experts, num_tasks)
        expert_units = check_units("expert_units", expert_units)
        check_rate("expert_dropout", expert_dropout)
        self.gate, self.gate_kwargs = check_gate(gate, gate_kwargs)
        self.return_gate_weights = check_bool("return_gate_weights", return_gate_weights)
        self.levels = [
            CGC(
                num_tasks,
                num_shared_experts=num_shared_experts,
                num_task_experts=list(self.num_task_experts),
                expert_units=expert_units,
                expert_activation=expert_activation,
                expert_dropout=expert_dropout,
                expert=expert,
                gate=gate,
                gate_kwargs=self.gate_kwargs,
                shared_output=j < self.num_levels - 1,
                return_gate_weights=True,
                kernel_initializer=kernel_initializer,
                kernel_regularizer=kernel_regularizer,
                dtype=self.dtype_policy,
                name=f"level_{j}",
            )
            for j in range(self.num_levels)
        ]
        self._gate_recorder = None

    def build(self, input_shape):
        check_one_input(self, input_shape, PER_TASK_HINT)
        shape = tuple(input_shape)
        for j, level in enumerate(self.levels):
            level.build(shape)
            out = level.compute_output_spec(
                keras.KerasTensor(shape) if j == 0 else [keras.KerasTensor(s) for s in shape]
            )[0]
            shape = [tuple(t.shape) for t in out]

    def call(self, inputs, training=None, mask=None):
        check_one_input(self, inputs, PER_TASK_HINT)
        h = inputs
        for level in self.levels:
            h, weights = level(h, training=training)
        if self._gate_recorder is not None:
            self._gate_recorder((list(weights), [mask] * self.num_tasks))
        if self.return_gate_weights:
            return h, weights
        return h

    def compute_output_shape(self, input_shape):
        check_one_input(self, input_shape, PER_TASK_HINT)
        shape = tuple(input_shape)
        for level in self.levels:
            shape, weights = level.compute_output_shape(shape)
        return (shape, weights) if self.return_gate_weights else shape

    def compute_output_spec(self, inputs, training=None, mask=None):
        check_one_input(self, inputs, PER_TASK_HINT)
        h = inputs
        for level in self.levels:
            h, weights = level.compute_output_spec(h)
        return (h, weights) if self.return_gate_weights else h

    def compute_mask(self, inputs, mask=None):
        # Acts per position: every output keeps the input's padding mask.
        if mask is None:
            return None
        masks = [mask] * self.num_tasks
        return (masks, list(masks)) if self.return_gate_weights else masks

    def gate_weights(self, inputs, training: bool = False) -> list:
        """The top level's task gate weights for `inputs` (a list per task)."""
        check_one_input(self, inputs, PER_TASK_HINT)
        h = inputs
        for level in self.levels:
            h, weights = level(h, training=training)
        return list(weights)

    def get_config(self):
        config = super().get_config()
        level = self.levels[0].get_config()
        config.update(
            {
                "num_tasks": self.num_tasks,
                "num_levels": self.num_levels,
                "num_shared_experts": self.num_shared_experts,
                "num_task_experts": list(self.num_task_experts),
                "expert_units": level["expert_units"],
                "expert_activation": level["expert_activation"],
                "expert_dropout": level["expert_dropout"],
                "expert": level["expert"],
                "gate": self.gate,
                "gate_kwargs": self.gate_kwargs,
                "return_gate_weights": self.return_gate_weights,
                "kernel_initializer": level["kernel_initializer"],
                "kernel_regularizer": level["kernel_regularizer"],
            }
        )
        return config
