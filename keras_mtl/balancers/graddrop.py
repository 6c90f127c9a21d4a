"""GradDrop: gradient sign dropout."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_mtl.balancers import solvers
from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_seed,
    is_number,
    register_balancer,
)


@register_balancer("graddrop")
class GradDrop(Balancer):
    """Gradient sign dropout at the shared representation.

    For every activation, the task gradients `g_t` vote on a sign: the
    sign purity `P = (1 + sum_t g_t / sum_t |g_t|) / 2` is the probability of
    keeping the positive ones. With `U ~ Uniform(0, 1)` drawn per activation,
    task `t`'s gradient is kept where `(P > U and g_t > 0)` or
    `(P < U and g_t < 0)` and dropped elsewhere; the update is the sum of the
    kept gradients. A leak `l_t` keeps `l_t g_t + (1 - l_t) mask_t g_t`.
    `P` is computed without LibMTL's `1e-7` added to `sum_t |g_t|` (as in
    the paper and torchjd), so the masks do not change with the scale of the
    gradients (LibMTL's `P` drifts to 1/2 for gradients below about 1e-7);
    an activation where every gradient is 0 gets `P = 1/2`.

    How it maps onto the engine: GradDrop prefers
    `gradient_mode="representation"`, where `J` holds the gradients with
    respect to the tensor marked by `keras_mtl.layers.SharedRepresentation`
    (flattened `(T, B*d)`) and the engine passes the representation value
    `Z`. `J` is reshaped to `(T, B, d)`; as in the paper (and LibMTL) the
    purity is computed per feature from the batch-summed gradients
    `sum_b g_t[b] * sign(Z[b])` (the sign correction of the batch-separated
    case), and one mask per task and feature is applied to every example.
    The returned direction is the masked representation gradient, which the
    engine backpropagates through the trunk once; every task weight is 1
    (task towers get their own unmodified gradients).

    With a plain parameter Jacobian (`gradient_mode="loop"` or `"jacobian"`,
    or standalone use without `representation`), each column of `J` is
    treated as one activation with a batch of one and no sign correction:
    the mask is drawn per shared parameter.

    Args:
        leak: a float in `[0, 1]` for every task, or a list with one per task.
        seed: seed of the dropout draws (`None`: unseeded). A seeded
            balancer draws the same masks eagerly and in `tf.function`; under
            XLA TensorFlow's random algorithm differs, so the masks differ
            from those without XLA (each sequence is reproducible).
        name: name of the balancer.

    Raises:
        ValueError: for leaks outside `[0, 1]` or an invalid seed.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import GradDrop
    >>> r = GradDrop(seed=0).aggregate(np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones(2))
    >>> np.asarray(r.direction).tolist()
    [4.0, 6.0]

    References:
        Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
        Gradient Sign Dropout", NeurIPS 2020.
    """

    requires_jacobian = True
    preferred_gradient_mode = "representation"

    def __init__(self, leak=0.0, seed: int | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        per_task = isinstance(leak, list | tuple) or (
            isinstance(leak, np.ndarray) and leak.ndim == 1
        )
        values = list(leak) if per_task else [leak]
        if not values or any(not is_number(v) or not 0 <= v <= 1 for v in values):
            raise ValueError(
                "Received an invalid value for `leak`, expected a number in [0, 1] or a list "
                f"of them, one per task. Received: leak={leak!r}"
            )
        self.leak = [float(v) for v in values] if per_task else float(leak)
        self.seed = check_seed(seed)

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        if isinstance(self.leak, list) and len(self.leak) != num_tasks:
            raise ValueError(
                f"Expected one `leak` per task ({num_tasks}). Received: leak={self.leak!r}"
            )
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")

    def compute(self, jacobian, losses, representation=None):
        num = self.num_tasks
        leak = ops.convert_to_tensor(
            self.leak if isinstance(self.leak, list) else [self.leak] * num, dtype="float32"
        )
        if representation is None:
            return BalanceResult(self._parameter_direction(jacobian, leak), ops.ones((num,)))
        rep = ops.cast(ops.convert_to_tensor(representation), "float32")
        features = math.prod(rep.shape[1:])
        grads = ops.reshape(jacobian, (num, -1, features))
        signs = ops.sign(ops.reshape(rep, (-1, features)))
        summed = ops.einsum("tbd,bd->td", grads, signs)
        purity = 0.5 * (
            1.0 + solvers.safe_divide(ops.sum(summed, axis=0), ops.sum(ops.abs(summed), axis=0))
        )
        draw = keras.random.uniform(ops.shape(purity), seed=self.seed_generator)
        keep = ops.logical_or(
            ops.logical_and((purity > draw)[None], summed > 0),
            ops.logical_and((purity < draw)[None], summed < 0),
        )
        mask = leak[:, None] + (1.0 - leak[:, None]) * ops.cast(keep, "float32")
        direction = ops.reshape(ops.einsum("tbd,td->bd", grads, mask), (-1,))
        return BalanceResult(direction, ops.ones((num,)))

    def _parameter_direction(self, jacobian, leak):
        # One activation per column: the kept gradients of a column are all
        # its positive ones or all its negative ones, so the masked sum only
        # needs (weighted) sums of J and of its positive part.
        positive = ops.relu(jacobian)
        coefficients = ops.stack([ops.ones_like(leak), 1.0 - leak, leak])
        sums = ops.matmul(coefficients, jacobian)  # (3, P)
        positive_sums = ops.matmul(coefficients[:2], positive)  # (2, P)
        absolute = 2.0 * positive_sums[0] - sums[0]
        purity = 0.5 * (1.0 + solvers.safe_divide(sums[0], absolute))
        draw = keras.random.uniform(ops.shape(purity), seed=self.seed_generator)
        kept_positive = positive_sums[1]
        kept_negative = sums[1] - positive_sums[1]
        dropped = ops.where(
            purity > draw, kept_positive, ops.where(purity < draw, kept_negative, 0.0)
        )
        return sums[2] + dropped

    def get_config(self) -> dict:
        return {**super().get_config(), "leak": self.leak, "seed": self.seed}
