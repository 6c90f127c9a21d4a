"""DSelect-k: a differentiable gate that selects k experts."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_mtl._validation import check_integer, check_number, check_positive_int
from keras_mtl.layers.expert_bank import fresh_initializer
from keras_mtl.layers.gate import softmax_last_axis

# Keeps log() finite on exact zeros of the selector outputs.
_EPSILON = 1e-6


def smooth_step(x, gamma: float):
    """The cubic smooth-step of Hazimeh et al.: 0 below `-gamma/2`, 1 above
    `gamma/2`, and `-2 x^3 / gamma^3 + 3 x / (2 gamma) + 1/2` in between.

    Args:
        x: tensor.
        gamma: width of the non-constant region, a positive float.

    Returns:
        Tensor like `x` with values in `[0, 1]`.

    Example:

    At `x = gamma/4` the cubic is `-2/64 + 3/8 + 1/2 = 0.84375`:

    >>> import numpy as np
    >>> from keras_mtl.layers.dselect_k import smooth_step
    >>> x = np.array([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0], "float32")
    >>> np.asarray(smooth_step(x, gamma=1.0)).tolist()
    [0.0, 0.0, 0.5, 0.84375, 1.0, 1.0]

    References:
        Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture
        of Experts with Applications to Multi-Task Learning", NeurIPS 2021.
    """
    cubic = -2.0 / gamma**3 * x**3 + 1.5 / gamma * x + 0.5
    return ops.where(x <= -gamma / 2, ops.zeros_like(x), ops.where(x >= gamma / 2, 1.0, cubic))


@keras.saving.register_keras_serializable(package="keras_mtl")
class DSelectK(keras.layers.Layer):
    """Differentiable sparse gate choosing at most k of E experts per example.

    Each of `k` single-expert selectors reads `m = ceil(log2 E)` logits
    `z = W_z x + b_z`; after a smooth-step `S`, selector i puts weight
    `r_j = prod_l S(z_l)^[bit l of j] (1 - S(z_l))^(1 - [bit l of j])` on
    expert j, where the bits of j are its binary code (most significant
    first). Once every `|z_l| >= gamma/2` the smooth-step is 0 or 1 and each
    selector is one-hot. The selectors are mixed with
    `softmax(W_a x + b_a)`, so the gate is

        weights = sum_i softmax(alpha)_i r(z^(i)),

    with at most k non-zero entries once saturated. In training the layer
    adds `entropy_reg` times the entropy `-sum_j r_j log(r_j + 1e-6)` of the
    selectors, summed over the selectors and over the examples of the batch
    (not averaged: as in the authors' `EntropyRegularizer`, so the values of
    `entropy_reg` tuned there carry over, and the pull towards one-hot
    selectors grows with the batch size), to the model losses. When E is not
    a power of 2 the codes E..2^m-1 are unreachable and a selector may put
    mass on them, so the weights sum to at most 1; as in the authors' code a
    penalty `1 / sum_j r_j` per selector, summed over selectors and examples,
    is then added in training, and the sum is 1 once the selectors have left
    those codes.
    A selector that saturates on an unused code (possible with a small
    `gamma` or large initial logits) gives every expert weight 0 and an
    infinite penalty with zero gradient, from which it cannot leave;
    `MultiTaskModel` then stops (or skips the step) on the non-finite
    regularization loss.
    With one expert (`m = 0`) the gate has no selector logits and the weight
    is 1.

    Args:
        num_experts: number of experts E, a positive integer.
        k: number of selectors (the maximal number of non-zero weights), an
            integer in `[1, E]`.
        gamma: positive width of the smooth-step's cubic region.
        entropy_reg: non-negative weight of the entropy regulariser (on its
            sum over the batch); a constant, where the authors'
            `EntropyRegularizer` (default 1e-6) also takes a schedule.
        z_initializer: initializer of the selector logits' kernel and bias;
            default uniform on `[-gamma/100, gamma/100]`, as in the paper's
            code, so that training starts in the smooth region.
        w_initializer: initializer of the selector-mixing kernel and bias;
            default uniform on `[-0.05, 0.05]`.
        **kwargs: other `keras.layers.Layer` arguments.

    Call arguments:
        inputs: tensor of shape `(batch, ..., features)`; its padding mask,
            if any, is passed on to every output and leaves the padded
            positions out of the regularisers' sums.
        training: whether to add the regularisers.
        mask: optional boolean padding mask of shape `(batch, ...)`.

    Returns:
        Float32 tensor of shape `(batch, ..., E)` of non-negative expert
        weights.

    Raises:
        ValueError: for a non-positive `num_experts`, `k` outside `[1, E]`, a
            non-positive `gamma` or a negative `entropy_reg`.

    Example:

    >>> import numpy as np, keras_mtl
    >>> gate = keras_mtl.layers.DSelectK(num_experts=4, k=2)
    >>> weights = np.asarray(gate(np.ones((3, 5), "float32")))
    >>> weights.shape, bool(np.allclose(weights.sum(-1), 1.0, atol=1e-6))
    ((3, 4), True)

    References:
        Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture
        of Experts with Applications to Multi-Task Learning", NeurIPS 2021.
    """

    def __init__(
        self,
        num_experts: int,
        k: int,
        gamma: float = 1.0,
        entropy_reg: float = 1e-6,
        z_initializer=None,
        w_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Acts per position: a padding mask passes through unchanged.
        self.supports_masking = True
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.k = check_integer(
            "k",
            k,
            f"an integer in [1, num_experts={self.num_experts}]",
            lambda v: not 1 <= v <= self.num_experts,
        )
        self.gamma = check_number("gamma", gamma, "a positive float", lambda v: v <= 0)
        self.entropy_reg = check_number(
            "entropy_reg", entropy_reg, "a non-negative float", lambda v: v < 0
        )
        # m = 0 for one expert: no selector logits, every selector is the empty
        # product 1 (as in the authors' code, where ceil(log2 1) = 0).
        self.num_binary = math.ceil(math.log2(self.num_experts))
        self.z_initializer = keras.initializers.get(
            z_initializer or keras.initializers.RandomUniform(-self.gamma / 100, self.gamma / 100)
        )
        self.w_initializer = keras.initializers.get(
            w_initializer or keras.initializers.RandomUniform(-0.05, 0.05)
        )
        # Row j holds the binary code of expert j, most significant bit first.
        codes = [list(np.binary_repr(j, width=self.num_binary)) for j in range(self.num_experts)]
        self._codes = np.array(codes, dtype="int32").astype("float32")
        self.z_dense = (
            keras.layers.Dense(
                self.k * self.num_binary,
                kernel_initializer=fresh_initializer(self.z_initializer),
                bias_initializer=fresh_initializer(self.z_initializer),
                dtype=self.dtype_policy,
                name="selector_logits",
            )
            if self.num_binary
            else None
        )
        self.w_dense = keras.layers.Dense(
            self.k,
            kernel_initializer=fresh_initializer(self.w_initializer),
            bias_initializer=fresh_initializer(self.w_initializer),
            dtype=self.dtype_policy,
            name="selector_weights",
        )

    def build(self, input_shape):
        if self.z_dense is not None:
            self.z_dense.build(tuple(input_shape))
        self.w_dense.build(tuple(input_shape))

    def selector_outputs(self, inputs):
        """The k selectors' weights over the experts, `(batch, ..., k, E)`."""
        if self.z_dense is None:
            return ops.ones((*ops.shape(inputs)[:-1], self.k, 1), dtype="float32")
        z = ops.cast(self.z_dense(inputs), "float32")
        z = ops.reshape(z, (*ops.shape(z)[:-1], self.k, self.num_binary))
        s = ops.expand_dims(smooth_step(z, self.gamma), -2)  # (..., k, 1, m)
        codes = ops.convert_to_tensor(self._codes)  # (E, m)
        return ops.prod(codes * s + (1.0 - codes) * (1.0 - s), axis=-1)

    def call(self, inputs, training=None, mask=None):
        selectors = self.selector_outputs(inputs)
        alpha = softmax_last_axis(ops.cast(self.w_dense(inputs), "float32"))
        weights = ops.sum(ops.expand_dims(alpha, -1) * selectors, axis=-2)
        if training:
            self._add_regularisers(selectors, mask)
        return weights

    def _add_regularisers(self, selectors, mask):
        # Summed, not averaged, over the examples (positions), as the authors'
        # code sums over the whole batch (dselect_k_moe.py: reduce_sum with no
        # axis); padded positions are left out.
        def total(per_example):
            if mask is None:
                return ops.sum(per_example)
            keep = ops.broadcast_to(ops.cast(mask, "bool"), ops.shape(per_example))
            return ops.sum(ops.where(keep, per_example, 0.0))

        if self.entropy_reg > 0:
            entropy = -ops.sum(selectors * ops.log(selectors + _EPSILON), axis=(-2, -1))
            self.add_loss(self.entropy_reg * total(entropy))
        if self.num_experts != 2**self.num_binary:
            self.add_loss(total(ops.sum(1.0 / ops.sum(selectors, axis=-1), axis=-1)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_experts,)

    def compute_output_spec(self, inputs, training=None, mask=None):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_experts": self.num_experts,
                "k": self.k,
                "gamma": self.gamma,
                "entropy_reg": self.entropy_reg,
                "z_initializer": keras.initializers.serialize(self.z_initializer),
                "w_initializer": keras.initializers.serialize(self.w_initializer),
            }
        )
        return config
