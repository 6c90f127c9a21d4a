"""Loss-scale balancing by logarithm, alone or around another balancer."""

from __future__ import annotations

from keras import ops

from keras_mtl.balancers.base import (
    Balancer,
    BalanceResult,
    check_number,
    deserialize,
    get,
    register_balancer,
    serialize,
    weighted_direction,
)
from keras_mtl.balancers.imtl import IMTL
from keras_mtl.balancers.imtl_l import IMTLL
from keras_mtl.balancers.uncertainty_weighting import UncertaintyWeighting


class _LossTransform(Balancer):
    """Base of balancers that transform each task loss `L_t -> f_t(L_t)` and
    optionally hand the transformed problem to an inner balancer.

    Since `grad f_t(L_t) = f_t'(L_t) grad L_t`, the inner balancer sees the
    Jacobian with row `t` multiplied by `f_t'(L_t)` and the losses `f_t(L_t)`;
    the effective weights are the inner weights times `f_t'(L_t)`.
    Subclasses implement `_transform(losses)` returning `(f(L), f'(L))`
    from the current state, and may update state in `_update(losses)`.
    """

    def __init__(self, inner=None, name: str | None = None, **kwargs):
        if inner is not None and not isinstance(inner, Balancer | str | dict):
            raise ValueError(
                "Received an invalid value for `inner`, expected None, a balancer name, a "
                f"config dict or a keras_mtl.balancers.Balancer. Received: inner={inner!r}"
            )
        super().__init__(name=name, **kwargs)
        self.inner = None if inner is None else get(inner)
        if self.inner is not None:
            # The engine reads these from the balancer it is given.
            self.requires_jacobian = self.inner.requires_jacobian
            self.jacobian_scope = self.inner.jacobian_scope
            self.preferred_gradient_mode = self.inner.preferred_gradient_mode
            self.supports_jit = self.inner.supports_jit

    def set_task_names(self, task_names: list[str]) -> None:
        super().set_task_names(task_names)
        if self.inner is not None:
            self.inner.set_task_names(task_names)

    def build(self, num_tasks: int) -> None:
        super().build(num_tasks)
        if self.inner is not None and not self.inner.built:
            self.inner.build(num_tasks)

    def observe(self, y_true: dict, y_pred: dict, masks: dict) -> None:
        if self.inner is not None:
            self.inner.observe(y_true, y_pred, masks)

    def on_epoch_begin(self, epoch: int) -> None:
        if self.inner is not None:
            self.inner.on_epoch_begin(epoch)

    def on_epoch_end(self, epoch: int) -> None:
        if self.inner is not None:
            self.inner.on_epoch_end(epoch)

    def logs(self) -> dict:
        return {} if self.inner is None else self.inner.logs()

    def _update(self, losses) -> None:
        del losses

    def _transform(self, losses):
        raise NotImplementedError(f"{type(self).__name__} must implement `_transform`.")

    def _transformed(self, losses):
        transformed, scales = self._transform(losses)
        # A task without labels in the batch (loss exactly 0) stays at 0, which
        # is how the inner balancers recognise it (log would give -18.4).
        return ops.where(losses == 0.0, 0.0, transformed), scales

    def compute(self, jacobian, losses, representation=None):
        self._update(losses)
        transformed, scales = self._transformed(losses)
        if self.inner is None:
            return BalanceResult(weighted_direction(scales, jacobian), scales)
        scaled = None if jacobian is None else jacobian * scales[:, None]
        result = self.inner.aggregate(scaled, transformed, representation=representation)
        return BalanceResult(result.direction, result.weights * scales)

    def auxiliary_loss(self, losses):
        if self.inner is None:
            return super().auxiliary_loss(losses)
        losses = ops.convert_to_tensor(losses, dtype="float32")
        if not self.built:
            self.build(int(losses.shape[0]))
        return self.inner.auxiliary_loss(self._transformed(losses)[0])

    def get_config(self) -> dict:
        config = super().get_config()
        config["inner"] = None if self.inner is None else serialize(self.inner)
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        if isinstance(config.get("inner"), dict):
            config["inner"] = deserialize(config["inner"])
        return cls(**config)


def _loss_scale_learner(balancer):
    """The balancer in `balancer` or its chain of wrapped (`inner`) balancers
    that learns loss scales whose objective is unbounded below for negative
    losses (uncertainty weighting, IMTL-L, hybrid IMTL), or `None`."""
    while balancer is not None:
        if isinstance(balancer, UncertaintyWeighting | IMTLL):
            return balancer
        if isinstance(balancer, IMTL) and balancer.mode == "hybrid":
            return balancer
        balancer = getattr(balancer, "inner", None)
    return None


@register_balancer("log", "log_loss")
class LogLoss(_LossTransform):
    """Loss-scale balancing of DB-MTL: optimise `log(L_t + epsilon)`.

    Alone, the objective is `sum_t log(L_t + epsilon)`, whose gradient is
    `sum_t grad L_t / (L_t + epsilon)`: the effective weights are
    `1 / (L_t + epsilon)`, which makes the update invariant to the scale of
    each loss (and the logged `loss`, `sum_t w_t L_t`, close to T at every
    step: monitor the `<task>_loss` logs instead, with `mode="min"` in Keras
    callbacks). The losses must be
    non-negative: for `L_t + epsilon < 0` the logarithm is undefined and the
    weight `1 / (L_t + epsilon)` is negative, which turns that task's descent
    into ascent.

    Around another balancer (`LogLoss(inner)`), the inner method balances the
    log-losses: it receives the Jacobian with row `t` divided by
    `L_t + epsilon` (the gradient of `log(L_t + epsilon)`) and the losses
    `log(L_t + epsilon)`; its direction is returned as is and the effective
    weights are its weights divided by `L_t + epsilon`. Any balancer can be
    wrapped, gradient methods included (DB-MTL's Fig. 1 combines it with
    PCGrad, MGDA and others); the wrapper takes the inner balancer's
    gradient needs and hooks. Inner methods that take logarithms or ratios of
    the losses themselves (GLS, DWA, FAMO) see losses that are negative when
    `L_t + epsilon < 1`. A loss of exactly 0 (a batch without the task's
    labels) is passed to the inner balancer as 0, its sign of no labels.

    Balancers that learn a scale per task from the losses themselves cannot
    be wrapped: uncertainty weighting (`exp(-s_t) L_t + s_t`), IMTL-L
    (`exp(s_t) L_t - s_t`) and IMTL in its default `"hybrid"` mode. Their
    objectives have a minimum in `s_t` only for a positive loss; a log-loss
    is negative as soon as `L_t + epsilon < 1`, the scales' gradient then
    never vanishes and the weights grow without bound (`exp(-s_t)` or
    `exp(s_t)` exponentially in the number of steps), so `LogLoss` refuses
    them, also nested in another wrapper. DB-MTL shows that the log
    transform is what IMTL-L converges to, so `LogLoss()` alone is the
    bounded form of that combination; DB-MTL combines the log transform with
    gradient methods (PCGrad, GradVac, IMTL-G, CAGrad, Nash-MTL,
    Aligned-MTL), which work with any sign of loss.

    Args:
        inner: `None`, or the balancer to wrap (an instance, a name or a
            config dict).
        epsilon: positive offset inside the logarithm (1e-8 in DB-MTL).
        name: name of the balancer.

    Raises:
        ValueError: for a non-positive `epsilon`, an invalid `inner`, or an
            `inner` that learns loss scales (see above).

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers import LogLoss
    >>> r = LogLoss().aggregate(None, np.array([2.0, 0.5]))
    >>> np.asarray(r.weights).tolist()
    [0.5, 2.0]
    >>> r = LogLoss("ew").aggregate(np.array([[2.0, 0.0], [0.0, 1.0]]), [2.0, 0.5])
    >>> np.asarray(r.direction).tolist()
    [1.0, 2.0]

    References:
        Lin, Ye, Wang, Zhang, Xu and Kwok, "Dual-Balancing for Multi-Task
        Learning", arXiv:2308.12029, 2023.
    """

    def __init__(self, inner=None, epsilon: float = 1e-8, name: str | None = None, **kwargs):
        check_number("epsilon", epsilon, "a positive float", lambda v: v <= 0)
        super().__init__(inner=inner, name=name, **kwargs)
        self.epsilon = float(epsilon)
        learner = _loss_scale_learner(self.inner)
        if learner is not None:
            raise ValueError(
                f"Received an invalid value for `inner`: `{type(learner).__name__}` learns a "
                "scale per task whose objective has no minimum when the loss is negative, and "
                "log-losses are negative once L + epsilon < 1, so its weights would grow without "
                "bound. Use LogLoss() alone (the limit of IMTL-L, as DB-MTL shows), the inner "
                "balancer alone, or LogLoss around a gradient method (e.g. IMTL(mode='gradient'))"
                ". A model saved with this combination by an earlier version loads with "
                "`keras.saving.load_model(path, compile=False)` (then compile it with another "
                f"balancer). Received: inner={self.inner.name!r} ({type(learner).__name__})"
            )

    def _transform(self, losses):
        shifted = losses + self.epsilon
        return ops.log(shifted), 1.0 / shifted

    def get_config(self) -> dict:
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config
