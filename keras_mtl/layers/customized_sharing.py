"""Customized sharing: shared and task-specific experts concatenated per task, no gates."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl._validation import check_positive_int, check_rate, check_units
from keras_mtl.layers.cgc import check_one_input, check_task_experts
from keras_mtl.layers.expert_bank import ExpertBank


@keras.saving.register_keras_serializable(package="keras_mtl")
class CustomizedSharing(keras.layers.Layer):
    """Shared experts plus experts per task, concatenated for each task.

    The gate-free counterpart of `CGC` (the "customized sharing" baseline
    of the PLE paper): task t receives the concatenation of its own experts'
    outputs and the shared experts' outputs, `[E_t(x), E_s(x)]`, flattened
    into the last axis, so the task tower decides how to use them.

    Args:
        num_tasks: number of tasks, a positive integer.
        num_shared_experts: number of shared experts, a positive integer.
        num_task_experts: positive integer, or one positive integer per task.
        expert_units: positive integer or sequence, widths of each expert's
            layers.
        expert_activation: activation of the expert layers.
        expert_dropout: dropout rate in `[0, 1)` inside the experts.
        expert: `None`, or a Keras layer (or layer config) cloned for every
            expert.
        kernel_initializer: initializer of the expert kernels.
        kernel_regularizer: regularizer of the expert kernels.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, ..., features)`; its padding mask,
            if any, is passed on to every output.
        training: whether dropout is active.

    Returns:
        A list of `num_tasks` tensors of shape
        `(batch, ..., (num_task_experts[t] + num_shared_experts) * units)`,
        task t's experts first, in task order.

    Raises:
        ValueError: for non-positive counts, a `num_task_experts` list whose
            length is not `num_tasks`, bad expert arguments, or (when called)
            a list of inputs.

    Example:

    >>> import keras, keras_mtl
    >>> x = keras.Input((10,))
    >>> h = keras_mtl.layers.CustomizedSharing(num_tasks=2, num_shared_experts=1,
    ...                                        num_task_experts=[1, 2], expert_units=(4,))(x)
    >>> [tuple(t.shape) for t in h]
    [(None, 8), (None, 12)]

    References:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task
        Learning (MTL) Model for Personalized Recommendations", RecSys 2020
        (Sec. 4.1 and Fig. 1, customized sharing).
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

    def build(self, input_shape):
        check_one_input(self, input_shape)
        for bank in [*self.task_experts, self.shared_experts]:
            bank.build(tuple(input_shape))

    def call(self, inputs, training=None):
        check_one_input(self, inputs)
        shared = self.shared_experts(inputs, training=training)
        outputs = []
        for bank in self.task_experts:
            both = ops.concatenate([bank(inputs, training=training), shared], axis=-2)
            shape = ops.shape(both)
            outputs.append(ops.reshape(both, (*shape[:-2], shape[-2] * shape[-1])))
        return outputs

    def compute_mask(self, inputs, mask=None):
        # Acts per position: every output keeps the input's padding mask.
        return None if mask is None else [mask] * self.num_tasks

    def compute_output_shape(self, input_shape):
        shape = self.shared_experts.compute_output_shape(tuple(input_shape))
        return [
            shape[:-2] + ((count + self.num_shared_experts) * shape[-1],)
            for count in self.num_task_experts
        ]

    def compute_output_spec(self, inputs, training=None):
        # The outputs have the experts' dtype (a user expert's own policy).
        check_one_input(self, inputs)
        dtype = self.shared_experts.compute_output_spec(inputs).dtype
        return [
            keras.KerasTensor(shape, dtype=dtype)
            for shape in self.compute_output_shape(inputs.shape)
        ]

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
                "kernel_initializer": bank["kernel_initializer"],
                "kernel_regularizer": bank["kernel_regularizer"],
            }
        )
        return config
