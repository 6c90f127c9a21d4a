"""Multi-gate Mixture-of-Experts (MMoE)."""

from __future__ import annotations

import keras

from keras_mtl._validation import check_bool, check_positive_int, check_rate, check_units
from keras_mtl.layers.cgc import (
    PER_TASK_HINT,
    check_expert_shape,
    check_one_input,
    mixed_shape,
    mixture_output_spec,
)
from keras_mtl.layers.expert_bank import ExpertBank, mix_experts
from keras_mtl.layers.gate import check_gate, make_gate


@keras.saving.register_keras_serializable(package="keras_mtl")
class MMoE(keras.layers.Layer):
    """E shared experts mixed by one gate per task.

    Task t receives `sum_e g_t(x)_e f_e(x)`, where the experts `f_e` are an
    `ExpertBank` and each gate `g_t` reads the layer input. With
    `num_tasks=1` (one gate whose output all task towers read) this is the
    One-gate MoE (OMoE) baseline of the paper.

    While `_gate_recorder` is set (to a callable, by
    `keras_mtl.callbacks.GateMonitor`), each eager call passes it
    `(gate_weights, masks)`: the task gates' weights and the input's padding
    mask (or `None`) per task.

    Args:
        num_tasks: number of tasks (gates), a positive integer.
        num_experts: number of experts E, a positive integer.
        expert_units: positive integer or sequence, widths of each expert's
            layers.
        expert_activation: activation of the expert layers.
        expert_dropout: dropout rate in `[0, 1)` inside the experts.
        expert: `None`, or a Keras layer (or layer config) cloned E times to
            use as experts instead of the built-in MLP.
        gate: `"softmax"` (`Gate`) or `"dselect_k"` (`DSelectK`).
        gate_kwargs: extra arguments of each gate, e.g.
            `{"temperature": 2.0, "dropout": 0.1}` for `"softmax"` or
            `{"k": 2}` (required) for `"dselect_k"`. Keep the values plain
            (numbers, strings, config dicts) so that the layer can be saved.
        return_gate_weights: whether to also return the gate weights.
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
        `(outputs, gate_weights)` where `gate_weights` is a list of
        `num_tasks` float32 tensors `(batch, ..., E)`.

    Raises:
        ValueError: for non-positive `num_tasks` or `num_experts`, bad expert
            arguments, an unknown or misspelt `gate` or `gate_kwargs` entry,
            gate arguments such as `k > E`, or (when called) a list of inputs
            or an `expert` that does not keep the input's axes but the last.

    Example:

    >>> import keras, keras_mtl
    >>> x = keras.Input((10,))
    >>> h = keras_mtl.layers.MMoE(num_tasks=2, num_experts=4, expert_units=(8,))(x)
    >>> [tuple(t.shape) for t in h]
    [(None, 8), (None, 8)]

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
    """

    def __init__(
        self,
        num_tasks: int,
        num_experts: int,
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
        self.num_experts = check_positive_int("num_experts", num_experts)
        expert_units = check_units("expert_units", expert_units)
        check_rate("expert_dropout", expert_dropout)
        self.gate, self.gate_kwargs = check_gate(gate, gate_kwargs)
        self.return_gate_weights = check_bool("return_gate_weights", return_gate_weights)
        self.experts = ExpertBank(
            num_experts,
            units=expert_units,
            activation=expert_activation,
            dropout=expert_dropout,
            expert=expert,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            dtype=self.dtype_policy,
            name="experts",
        )
        self.gates = [
            make_gate(self.gate, num_experts, self.gate_kwargs, f"gate_{t}", self.dtype_policy)
            for t in range(self.num_tasks)
        ]
        self._gate_recorder = None

    def build(self, input_shape):
        check_one_input(self, input_shape, PER_TASK_HINT)
        self.experts.build(tuple(input_shape))
        check_expert_shape(self, input_shape, self.experts.compute_output_shape(tuple(input_shape)))
        for gate in self.gates:
            gate.build(tuple(input_shape))

    def call(self, inputs, training=None, mask=None):
        check_one_input(self, inputs, PER_TASK_HINT)
        experts = self.experts(inputs, training=training)
        weights = [gate(inputs, training=training) for gate in self.gates]
        outputs = [mix_experts(w, experts) for w in weights]
        if self._gate_recorder is not None:
            self._gate_recorder((weights, [mask] * self.num_tasks))
        if self.return_gate_weights:
            return outputs, weights
        return outputs

    def compute_output_shape(self, input_shape):
        check_one_input(self, input_shape, PER_TASK_HINT)
        shape = tuple(input_shape)
        outputs = [mixed_shape(self.experts.compute_output_shape(shape))] * self.num_tasks
        if self.return_gate_weights:
            return outputs, [gate.compute_output_shape(shape) for gate in self.gates]
        return outputs

    def compute_output_spec(self, inputs, training=None, mask=None):
        check_one_input(self, inputs, PER_TASK_HINT)
        dtype = self.experts.compute_output_spec(inputs).dtype
        return mixture_output_spec(
            self.compute_output_shape(inputs.shape), dtype, self.return_gate_weights
        )

    def compute_mask(self, inputs, mask=None):
        # Acts per position: every output keeps the input's padding mask.
        if mask is None:
            return None
        masks = [mask] * self.num_tasks
        return (masks, list(masks)) if self.return_gate_weights else masks

    def gate_weights(self, inputs, training: bool = False) -> list:
        """The per-task gate weights for `inputs` (a list of `(batch, ..., E)`)."""
        check_one_input(self, inputs, PER_TASK_HINT)
        return [gate(inputs, training=training) for gate in self.gates]

    def get_config(self):
        config = super().get_config()
        bank = self.experts.get_config()
        config.update(
            {
                "num_tasks": self.num_tasks,
                "num_experts": self.num_experts,
                "expert_units": bank["units"],
                "expert_activation": bank["activation"],
                "expert_dropout": bank["dropout"],
                "expert": bank["expert"],
                "gate": self.gate,
                "gate_kwargs": self.gate_kwargs,
                "return_gate_weights": self.return_gate_weights,
                "kernel_initializer": bank["kernel_initializer"],
                "kernel_regularizer": bank["kernel_regularizer"],
            }
        )
        return config
