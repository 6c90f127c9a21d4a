"""`MultiTaskModel`: a `keras.Model` whose training step balances the tasks."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# Private in Keras 3: what Keras's loss wrapper does to labels before a loss function.
from keras.src.losses.loss import squeeze_or_expand_to_same_rank

# Private in Keras 3, but the only way to build functional models of our own class.
from keras.src.models.functional import Functional

from keras_mtl import balancers as balancers_module
from keras_mtl.balancers.base import model_step
from keras_mtl.gradients.engine import (
    GradientEngine,
    cpu_replica_devices,
    layer_path,
    resolve_shared_layers,
)


@keras.saving.register_keras_serializable(package="keras_mtl")
class MultiTaskModel(keras.Model):
    """A Keras model with one output per task and a balanced training step.

    Build it with the functional API from a dict of task outputs (task names
    are the dict keys), or subclass it and return such a dict from `call`.
    `compile` takes per-task losses and a balancer; `fit`, `evaluate`,
    `predict`, callbacks, `.keras` saving and `export` work as in Keras.

    Each training step computes one loss per task (examples without a label
    for that task contribute nothing), hands the losses, and for gradient
    methods the Jacobian of the shared variables, to the balancer, and applies
    the balanced update. The logs report `<task>_loss` (averaged over the
    task's labelled examples, so that `evaluate` does not depend on
    `batch_size`), `loss` (the weighted objective `sum_t w_t L_t`, averaged
    the same way, plus regularisation), `<task>_weight` (the effective weight
    the balancer gave the task, averaged over the steps where it had labels)
    and the compiled metrics. `evaluate` (and `val_loss`) weights the losses
    with the last training weights of each task (before any training: 1, or a
    `StaticWeighting`'s fixed weights, as Keras's `loss_weights`), and logs
    them as `<task>_weight`. A task without any label in an epoch (or in
    `evaluate`'s data) logs `<task>_weight` 0, in `fit` and `evaluate`
    alike, as its `<task>_loss` is 0: it added nothing to the objective. It
    keeps its last weight, which later steps and `evaluate` use once it has
    labels. Where the weights follow the inverse of the losses or gradients,
    `loss` does not fall as the tasks improve (DB-MTL and log-loss:
    `w_t = 1 / L_t`, so `loss` stays near T; Nash-MTL: it grows as the
    gradients shrink): have `EarlyStopping` or `ModelCheckpoint` monitor a
    `val_<task>_loss` or a metric instead, with `mode="min"` or `"max"` (as
    for any per-output name in Keras, `mode="auto"` cannot tell the direction
    and raises).

    Missing labels: give `sample_weight={task: w}` with 0 for examples that
    have no label for the task (any weight that is not positive, NaN
    included, counts as 0), or NaN in float labels. A task's loss is the
    weighted sum of its per-example losses divided by the number of labelled
    examples (equal to Keras's mean when every example is labelled); a batch
    without any label for a task gives it loss 0 and no gradient. Metrics
    ignore unlabelled examples.

    Args:
        inputs: functional-API inputs.
        outputs: a dict `{task_name: tensor}`.
        **kwargs: other `keras.Model` arguments.

    Raises:
        ValueError: if `outputs` is not a non-empty dict.

    Example:

    >>> import keras, numpy as np, keras_mtl
    >>> x = keras.Input((4,))
    >>> h = keras_mtl.layers.SharedBottom(units=(8,))(x)
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs=x,
    ...     outputs={"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)},
    ... )
    >>> model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"}, balancer="ew")
    >>> data = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> history = model.fit(data, {"a": data[:, :1], "b": data[:, 1:2]}, epochs=1, verbose=0)
    >>> sorted(k for k in history.history if k.endswith("_weight"))
    ['a_weight', 'b_weight']

    References:
        Caruana, "Multitask Learning", Machine Learning 28, 1997.
    """

    def __new__(cls, *args, **kwargs):
        # Like `keras.Model`, functional arguments give a functional model. Keras
        # would instead rewrite the bases of this class in place (making every
        # later subclass functional), so the functional variant is its own class.
        if _functional_arguments(args, kwargs):
            if cls is MultiTaskModel:
                return super().__new__(FunctionalMultiTaskModel)
            if not issubclass(cls, Functional):
                raise TypeError(
                    f"`{cls.__name__}` subclasses MultiTaskModel and was called with `inputs` and "
                    "`outputs`. Build functional models with `keras_mtl.MultiTaskModel(inputs, "
                    "outputs)` directly, or define `call` in the subclass."
                )
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        if _functional_arguments(args, kwargs):
            outputs = kwargs.get("outputs", args[1] if len(args) > 1 else None)
            if not isinstance(outputs, dict) or not outputs:
                raise ValueError(
                    "Expected `outputs` to be a non-empty dict {task_name: tensor}, one entry per "
                    f"task. Received: outputs of type {type(outputs).__name__}"
                )
        super().__init__(*args, **kwargs)
        self.task_names: list[str] | None = None
        self.balancer = None
        self._engine = None

    # ---------------------------------------------------------------- compile
    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        balancer="ew",
        metrics=None,
        shared_layers=None,
        gradient_mode: str = "auto",
        nonfinite: str = "raise",
        run_eagerly: bool = False,
        steps_per_execution: int = 1,
        jit_compile="auto",
        auto_scale_loss: bool = True,
        loss_weights=None,
        weighted_metrics=None,
    ) -> None:
        """Configures the model for training.

        Args:
            optimizer: a Keras optimizer or its name.
            loss: a dict `{task_name: loss}` with one loss per task (names,
                functions, `keras.losses.Loss` instances or classes, or
                config dicts, as Keras takes them), or a single loss used
                for every task. `"crossentropy"` (or `"ce"`) is binary,
                sparse categorical or categorical cross-entropy by the
                shapes of the task's labels and predictions, as in Keras; a
                class is instantiated with its defaults (and saved as that
                instance). Every output is a task: `None` is refused (for
                an output that is only predicted, such as an embedding, use
                a second `keras.Model` on the same layers). Losses with `reduction="sum_over_batch_size"` (Keras's default) or
                `"mean"` average over the labelled examples,
                `"mean_with_sample_weight"` divides the weighted sum by the
                sum of the weights, as in Keras; `"sum"` is refused.
            balancer: a balancer name (see `keras_mtl.balancers.available()`),
                a config dict, or a `keras_mtl.balancers.Balancer`.
            metrics: a dict `{task_name: [metrics]}`; unlabelled examples
                are excluded from the metrics.
            shared_layers: `None` to find the shared variables on the first
                step, or layers (or layer names) whose variables are shared.
            gradient_mode: `"auto"`, `"loop"`, `"jacobian"` or
                `"representation"` (see `keras_mtl.gradients.GradientEngine`).
                Loss-only balancers always take one backward pass.
            nonfinite: `"raise"` stops training on a non-finite task loss or
                update; `"skip"` skips such steps and counts them in the
                `skipped_steps` log: a running total over the model's
                training, kept across `fit` and `compile` calls and saved
                with the model. A non-finite update is never applied.
            run_eagerly: as in `keras.Model.compile`.
            steps_per_execution: as in `keras.Model.compile`; 1 under a
                distribution strategy with several replicas, where Keras 3's
                multi-step loop fails (plain `keras.Model` too).
            jit_compile: as in `keras.Model.compile`; `"auto"` leaves XLA off
                for balancers that cannot run under it (`supports_jit=False`,
                e.g. cvxpy solvers), `True` is refused for them, and under a
                distribution strategy whose replicas are CPU devices, where
                TensorFlow's XLA fails (plain `keras.Model` too).
            auto_scale_loss: as in `keras.Model.compile`.
            loss_weights: not supported (refused when given): the balancer
                sets the task weights; fixed weights are
                `balancer=keras_mtl.balancers.StaticWeighting({...})`.
            weighted_metrics: not supported (refused when given): `metrics`
                already leave out unlabelled examples.

        Raises:
            ValueError: if the loss keys do not match the task outputs, for
                an unknown balancer, gradient mode or `nonfinite` value, a
                loss with `reduction="sum"`, `loss_weights` or
                `weighted_metrics`, for `steps_per_execution > 1` with
                several replicas, or for `jit_compile=True` with a balancer
                that cannot run under XLA or with several CPU replicas.
        """
        if loss_weights is not None:
            raise ValueError(
                "`loss_weights` is not supported by MultiTaskModel: the balancer sets the task "
                "weights. For fixed weights pass `balancer=keras_mtl.balancers."
                f"StaticWeighting({loss_weights!r})`. Received: loss_weights={loss_weights!r}"
            )
        if weighted_metrics:  # Keras's default None, or an empty list, asks for nothing
            raise ValueError(
                "`weighted_metrics` is not supported by MultiTaskModel: pass the metrics as "
                "`metrics={task: [...]}`, which leave out unlabelled examples (sample weight 0 "
                f"or a NaN label). Received: weighted_metrics={weighted_metrics!r}"
            )
        replicas = self.distribute_strategy.num_replicas_in_sync
        if steps_per_execution > 1 and replicas > 1:
            # keras-team/keras#19246: the loop over steps then dies in graph
            # execution ("You must feed a value for placeholder tensor").
            raise ValueError(
                "`steps_per_execution` > 1 is not supported under a tf.distribute strategy with "
                "several replicas: Keras 3's multi-step loop fails there (plain keras.Model "
                "included). Pass steps_per_execution=1. Received: "
                f"steps_per_execution={steps_per_execution} with {replicas} replicas"
            )
        # Keras turns XLA off itself when running eagerly.
        xla = jit_compile is True and not run_eagerly and replicas > 1
        cpus = cpu_replica_devices(self.distribute_strategy) if xla else []
        if cpus:
            # XLA's step then reads a replica's variables on another CPU device
            # and fails ("Trying to access resource ... located in device CPU:1
            # from device CPU:0"), plain keras.Model included. GPUs may work.
            raise ValueError(
                "`jit_compile=True` is not supported under a tf.distribute strategy whose "
                "replicas are CPU devices: TensorFlow's XLA fails there, reading a replica's "
                "variables from another CPU (plain keras.Model included). Pass "
                'jit_compile=False or "auto". Received: jit_compile=True with the replicas on '
                f"{cpus}"
            )
        task_names = self._resolve_task_names(loss)
        if isinstance(loss, dict):
            losses = dict(loss)
        else:
            if loss is None:
                raise ValueError(
                    "Expected `loss` to be a dict {task_name: loss} with one loss per task "
                    f"{task_names}. Received: loss=None"
                )
            if isinstance(loss, list | tuple):
                raise ValueError(
                    f"Expected `loss` to be a dict {{task_name: loss}} with the tasks {task_names}, "
                    f"or one loss for every task. Received: loss={loss!r}"
                )
            losses = {name: loss for name in task_names}
        # Resolved once: a config dict would otherwise give a new loss object
        # at each resolution, and the checks of the step read the resolved
        # loss (its `ignore_class`), not the identifier.
        resolved = [_resolve_loss(name, losses[name]) for name in task_names]
        loss_fns = [_loss_fn(fn) for fn in resolved]
        by_weight = [
            _reduction(name, losses[name], fn) == "mean_with_sample_weight"
            for name, fn in zip(task_names, resolved, strict=True)
        ]
        metrics = self._check_task_dict("metrics", metrics, task_names, required=False)
        _check_metrics(metrics)
        shared_names = None
        if shared_layers is not None:
            # Names for the compile config: a layer object is saved as a name
            # (or path) that finds it again when the model is loaded.
            shared_names = [layer_path(self, s) for s in resolve_shared_layers(self, shared_layers)]
        balancer = balancers_module.get(balancer)
        self._engine = GradientEngine(gradient_mode, shared_layers, nonfinite)
        balancer.set_task_names(task_names)
        if not balancer.built:
            balancer.build(len(task_names))
        elif balancer.num_tasks != len(task_names):
            raise ValueError(
                f"The balancer was built for {balancer.num_tasks} tasks, the model has "
                f"{len(task_names)}: {task_names}. Received: balancer={balancer.name!r}"
            )
        if jit_compile is True and not balancer.supports_jit:
            raise ValueError(
                f"The balancer `{type(balancer).__name__}` cannot run under XLA. Received: "
                "jit_compile=True"
            )
        if jit_compile == "auto" and not balancer.supports_jit:
            jit_compile = False
        # A built subclassed model locks its state; recompiling replaces the
        # balancer and the trackers and may add state variables.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            previous = self.balancer
            replaced = previous is not None and previous is not balancer
            if replaced:
                # Keras untracks only variables on `del`; the old balancer's
                # variables would otherwise stay in the model's weights.
                self._tracker.untrack(previous)
                del self.balancer
            self.balancer = balancer
            self.task_names = task_names
            # As given, a config dict too (see `compile_from_config`).
            self._losses_config = losses
            self._resolved_losses = resolved
            self._loss_fns = loss_fns
            self._weighted_means = by_weight
            self._auto_scale_loss = auto_scale_loss
            # Untracked: a tracked dict of metric objects would add them to
            # `metrics` a second time, logged without the task prefix.
            object.__setattr__(self, "_metrics_config", metrics)
            self._gradient_config = {
                "shared_layers": shared_names,
                "gradient_mode": gradient_mode,
                "nonfinite": nonfinite,
            }
            super().compile(
                optimizer=optimizer,
                loss=None,
                weighted_metrics=metrics,
                run_eagerly=run_eagerly,
                steps_per_execution=steps_per_execution,
                jit_compile=jit_compile,
                auto_scale_loss=auto_scale_loss,
            )
            # Replaces Keras's mean of the per-batch losses, which missing
            # labels bias (see `_LossMeans`).
            self._loss_tracker = _LossMeans(task_names)
            # Keras lists `_loss_tracker` first in `metrics` by itself (its own
            # `compile` does not track it); tracked, it would be listed twice.
            self._tracker.untrack(self._loss_tracker)
            self._task_weight_tracker = _TaskWeightMeans(task_names)
            made = self._make_state_variables(len(task_names))
            if replaced and not made:
                # The last weights belong to the balancer that gave them:
                # `evaluate` after recompiling with another weighs as before
                # any training.
                self._last_task_weights.assign(np.ones(len(task_names), "float32"))
            if isinstance(balancer, balancers_module.StaticWeighting):
                # Known now: `evaluate` before `fit` weighs by them too.
                fixed = balancer.aggregate(None, np.ones(len(task_names), "float32"))
                self._last_task_weights.assign(fixed.weights)
        finally:
            if locked:
                self._tracker.lock()

    def _make_state_variables(self, num_tasks: int) -> bool:
        """Makes the model's state for `num_tasks` tasks; whether it made it."""
        existing = getattr(self, "_last_task_weights", None)
        if existing is not None and existing.shape == (num_tasks,):
            return False
        # Model-level state, saved with the weights: the weights of the last
        # training step (used by `evaluate`) and the count of skipped steps.
        self._last_task_weights = self.add_weight(
            shape=(num_tasks,),
            initializer="ones",
            trainable=False,
            name="last_task_weights",
            aggregation="only_first_replica",
        )
        self._skipped_steps = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            name="skipped_steps",
            aggregation="only_first_replica",
        )
        return True

    def _resolve_task_names(self, loss) -> list[str]:
        structure = getattr(self, "_outputs_struct", None)
        if structure is not None:
            if not isinstance(structure, dict):
                raise ValueError(
                    "Expected the model's outputs to be a dict {task_name: tensor}. Received: "
                    f"outputs of type {type(structure).__name__}"
                )
            names = [str(k) for k in structure]
            if isinstance(loss, dict):
                self._check_task_dict("loss", loss, names, required=True)
            return names
        if not isinstance(loss, dict) or not loss:
            raise ValueError(
                "A subclassed MultiTaskModel needs `loss` as a dict {task_name: loss} to know "
                f"its tasks. Received: loss={loss!r}"
            )
        return [str(k) for k in loss]

    @staticmethod
    def _check_task_dict(argument: str, value, task_names, required: bool):
        if value is None and not required:
            return None
        if not isinstance(value, dict):
            raise ValueError(
                f"Expected `{argument}` to be a dict keyed by the task names {list(task_names)}. "
                f"Received: {argument} of type {type(value).__name__}"
            )
        unknown = [k for k in value if k not in task_names]
        missing = [t for t in task_names if t not in value]
        if unknown or (required and missing):
            raise ValueError(
                f"The keys of `{argument}` do not match the model's task outputs. Task outputs: "
                f"{list(task_names)}. Received keys: {list(value)}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {missing}" if required and missing else "")
            )
        return value

    @property
    def shared_variable_paths(self) -> list[str] | None:
        """Paths of the variables treated as shared: known after the first
        step for balancers that need per-task gradients, `None` for
        loss-weighting ones (they need no shared variables)."""
        return None if self._engine is None else self._engine.shared_variable_paths

    # ------------------------------------------------------------------ losses
    def task_loss_terms(self, y, y_pred, sample_weight):
        """Per-task masked loss sums and label counts for one batch.

        Args:
            y: dict `{task: labels}` (NaN marks a missing float label).
            y_pred: dict `{task: predictions}`.
            sample_weight: `None`, one array for all tasks, or a dict.

        Returns:
            `(sums, counts, y_clean, masks)`: lists of `T` scalars, the
            weighted loss sums and the numbers of labelled examples (the sums
            of their weights for `reduction="mean_with_sample_weight"`), the
            labels with NaN replaced by 0,
            and `{task: (batch,) mask}` (1 where the label is present and its
            weight is positive).

        Raises:
            ValueError: for missing or unknown tasks in `y`, `y_pred` or
                `sample_weight`, sample weights of the wrong shape, or labels
                of unknown rank for a Keras loss.
        """
        names = self.task_names
        y = self._targets("y", y, names)
        if not isinstance(y_pred, dict):
            raise ValueError(
                f"Expected the model to return a dict {{task_name: tensor}} with the tasks "
                f"{names}. Received: outputs of type {type(y_pred).__name__}"
            )
        missing = [t for t in names if t not in y_pred]
        unknown = [k for k in y_pred if k not in names]
        if missing or unknown:
            raise ValueError(
                f"The model returned outputs {list(y_pred)}; the tasks compiled with `loss` are "
                f"{names}."
                + (f" Missing outputs: {missing}." if missing else "")
                + (f" Outputs without a loss: {unknown}." if unknown else "")
            )
        if sample_weight is not None and not isinstance(sample_weight, dict):
            sample_weight = {name: sample_weight for name in names}
        elif sample_weight is not None:
            self._check_task_dict("sample_weight", sample_weight, names, required=False)
        sums, counts, y_clean, masks = [], [], {}, {}
        for name, loss, fn, by_weight in zip(
            names, self._resolved_losses, self._loss_fns, self._weighted_means, strict=True
        ):
            pred = ops.cast(y_pred[name], "float32")
            target = ops.convert_to_tensor(y[name])
            if loss is _CROSSENTROPY:
                # Decided where the shapes are known, as Keras decides in its
                # first step; the function chosen computes the loss, and has
                # no `reduction` or `ignore_class` (as `compile` assumed).
                loss = _crossentropy_for(name, target.shape, pred.shape)
                fn = _loss_fn(loss)
            if _is_keras_loss(loss):
                _check_label_width(name, target.shape, pred.shape)
            batch = ops.shape(pred)[0]
            valid = None  # (batch,) bool; None when every example is labelled
            if "float" in str(target.dtype):
                nan = ops.isnan(target)
                target = ops.where(nan, ops.zeros_like(target), target)
                if len(nan.shape) > 1:
                    nan = ops.any(ops.reshape(nan, (ops.shape(nan)[0], -1)), axis=1)
                valid = ops.logical_not(nan)
            sw = None if sample_weight is None else sample_weight.get(name)
            if sw is not None:
                sw = ops.cast(ops.convert_to_tensor(sw), "float32")
                if len(sw.shape) == 2 and sw.shape[1] == 1:
                    sw = ops.squeeze(sw, axis=1)
                if len(sw.shape) != 1:
                    raise ValueError(
                        f"Expected `sample_weight` for task '{name}' of shape (batch,) or "
                        f"(batch, 1). Received: sample_weight with shape {tuple(sw.shape)}"
                    )
                valid = sw > 0 if valid is None else ops.logical_and(valid, sw > 0)
                # NaN and negative weights mark missing labels like 0 does.
                sw = ops.where(valid, sw, 0.0)
            # Keras's `ignore_class` (sparse categorical cross-entropy) marks
            # missing integer labels: the loss is 0 there and Keras averages
            # over the other positions; here they leave the example's mean,
            # and an example without any labelled position is unlabelled.
            ignored = getattr(loss, "ignore_class", None)
            positions = None
            if ignored is not None:
                positions = ops.not_equal(target, ops.cast(ignored, target.dtype))
                if len(positions.shape) > 1 and positions.shape[-1] == 1:
                    positions = ops.squeeze(positions, -1)
                some = ops.any(ops.reshape(positions, (batch, -1)), axis=1)
                valid = some if valid is None else ops.logical_and(valid, some)
            if valid is not None:
                # The loss may be inf or NaN on unlabelled examples, and so
                # may its derivative there; a select passes no gradient, not
                # even 0 * inf, to the branch it drops.
                keep = ops.reshape(valid, (-1,) + (1,) * (len(pred.shape) - 1))
                pred = ops.where(keep, pred, ops.stop_gradient(pred))
            values = ops.cast(fn(target, pred), "float32")
            if positions is not None and len(values.shape) > 1:
                kept = ops.reshape(ops.cast(positions, "float32"), (batch, -1))
                total = ops.sum(ops.reshape(values, (batch, -1)) * kept, axis=1)
                values = total / ops.maximum(ops.sum(kept, axis=1), 1.0)
            elif len(values.shape) > 1:
                values = ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=1)
            elif len(values.shape) == 0:
                raise ValueError(
                    f"Expected the loss of task '{name}' to return per-example losses, one "
                    "value per example: the model averages them over the labelled examples. "
                    "Pass a loss name, a loss function or a keras.losses.Loss. Received: "
                    f"loss={{'{name}': {self._losses_config[name]!r}}}, which returned a scalar"
                )
            if valid is None:
                labelled = ops.ones((batch,), dtype="float32")
                sums.append(ops.sum(values))
                counts.append(ops.cast(batch, "float32"))
            else:
                labelled = ops.cast(valid, "float32")
                weighted = values if sw is None else values * sw
                sums.append(ops.sum(ops.where(valid, weighted, 0.0)))
                # `reduction="mean_with_sample_weight"`: divided by the
                # weights' sum (0 where unlabelled), as Keras does.
                if by_weight and sw is not None:
                    counts.append(ops.sum(ops.where(valid, sw, 0.0)))
                else:
                    counts.append(ops.sum(labelled))
            y_clean[name] = target
            masks[name] = labelled
        return sums, counts, y_clean, masks

    def regularization_loss(self):
        """The sum of the layers' added losses (weight regularisers, DSelect-k's
        entropy term) as a float32 scalar; 0 when there are none."""
        if not self.losses:
            return ops.convert_to_tensor(0.0, dtype="float32")
        return ops.sum(ops.stack([ops.cast(loss, "float32") for loss in self.losses]))

    @staticmethod
    def _targets(argument, y, names):
        if not isinstance(y, dict):
            raise ValueError(
                f"Expected `{argument}` to be a dict {{task_name: labels}} with the tasks {names}. "
                f"Received: {argument} of type {type(y).__name__}"
            )
        missing = [t for t in names if t not in y]
        unknown = [k for k in y if k not in names]
        if missing or unknown:
            raise ValueError(
                f"Expected `{argument}` to have one entry per task {names}. Received keys: "
                f"{list(y)}"
                + (f"; no labels for {missing}" if missing else "")
                + (f"; unknown tasks {unknown}" if unknown else "")
            )
        return y

    # ------------------------------------------------------------------- steps
    def train_step(self, data):
        self._check_compiled()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with model_step():
            out = self._engine.train_step(self, x, y, sample_weight)
        keep = 1.0
        if self._engine.nonfinite == "skip":
            # A skipped step adds nothing to the logs: its non-finite values
            # (times a zero weight, still NaN) would spoil the epoch's means.
            finite = out["finite"]
            keep = ops.cast(finite, "float32")
            self._skipped_steps.assign_add(1.0 - keep)
            out = {
                k: keras.tree.map_structure(lambda t: ops.where(finite, t, ops.zeros_like(t)), v)
                for k, v in out.items()
                if k != "finite"
            }
        # Non-finite weights reach this point only with a loss scale optimizer
        # (elsewhere the step raises or is skipped above): the overflowing
        # step it skips (CAGrad and Aligned-MTL give NaN weights on an
        # overflowed Jacobian). They are logged and kept as the last weights
        # of an applied step, so the epoch's `loss` and `evaluate` stay finite.
        weights = ops.where(
            ops.all(ops.isfinite(out["weights"])), out["weights"], self._last_task_weights
        )
        # A task without labels in the batch keeps its last weight: what a
        # balancer gives it there moves nothing (its loss and gradient are 0)
        # and may be meaningless (DB-MTL's 1 / L_t is 1e8 at L_t = 0).
        # (A skipped step's counts are zeroed above.)
        self._last_task_weights.assign(
            ops.where(out["counts"] > 0, weights, self._last_task_weights)
        )
        logs = self._update_metrics(
            x,
            out["losses"],
            weights,
            out["counts"],
            out["regularization"],
            out["y_true"],
            out["y_pred"],
            out["masks"],
            keep,
        )
        if self.distribute_strategy.num_replicas_in_sync == 1:
            # Keys beyond the metrics' make Keras take the epoch's logs from
            # the last step; with several replicas that averages each
            # replica's partial metrics, so `_BalancerEpochHook` adds these
            # at the end of the epoch instead.
            # Tensors, not variables: eagerly (`run_eagerly=True`) Keras
            # cannot pass a variable out of the step (`convert_to_tensor`
            # returns a backend variable as it is; a copy is a tensor).
            logs.update({k: ops.copy(v) for k, v in self._state_logs().items()})
        return logs

    def test_step(self, data):
        self._check_compiled()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        sums, counts, y_clean, masks = self.task_loss_terms(y, y_pred, sample_weight)
        counts = ops.stack(counts)
        # As in the engine: weight sums below 1 are divisors too.
        losses = ops.stack(sums) / ops.where(counts > 0, counts, 1.0)
        weights = ops.convert_to_tensor(self._last_task_weights)
        return self._update_metrics(
            x, losses, weights, counts, self.regularization_loss(), y_clean, y_pred, masks
        )

    def _update_metrics(
        self, x, losses, weights, counts, regularization, y_true, y_pred, masks, keep=1.0
    ):
        # `keep` is 0 for a skipped step, which then counts for nothing.
        batch = ops.cast(ops.shape(keras.tree.flatten(x)[0])[0], "float32") * keep
        self._loss_tracker.update_state(losses, weights, counts, regularization, batch)
        self._task_weight_tracker.update_state(
            weights, sample_weight=ops.cast(counts > 0, "float32")
        )
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y_true, y_pred, sample_weight=masks)
        return self.get_metrics_result()

    def _check_compiled(self):
        if self._engine is None:
            raise RuntimeError("Call `compile()` on the MultiTaskModel before training it.")

    # --------------------------------------------------------------------- fit
    def fit(
        self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, **kwargs
    ):
        """`keras.Model.fit`, plus epoch notifications to the balancer.

        Args and Returns: as `keras.Model.fit`. A `sample_weight` dict, in
        `sample_weight` or as the third element of `validation_data`, may
        leave out tasks (their examples weigh 1).

        Raises:
            ValueError: for `y` that is not a dict, a `sample_weight` dict
                with unknown tasks, or `class_weight` (use `sample_weight`).
        """
        self._check_compiled()
        _check_y_argument(y)
        _check_class_weight(kwargs.get("class_weight"))
        if "sample_weight" in kwargs:
            kwargs["sample_weight"] = self._complete_sample_weight(x, kwargs["sample_weight"])
        validation = kwargs.get("validation_data")
        if isinstance(validation, list | tuple) and len(validation) == 3:
            vx, vy, vw = validation
            kwargs["validation_data"] = (vx, vy, self._complete_sample_weight(vx, vw))
        if self.built:
            with self.distribute_strategy.scope():
                self._engine.prepare(self)
        # First, so that the user's callbacks see what it adds to the logs.
        hook = _BalancerEpochHook(self)
        given = callbacks if isinstance(callbacks, keras.callbacks.CallbackList) else None
        if given is not None:
            # Keras uses a `CallbackList` as it is (it adds no History or
            # progress bar to it): the hook joins it for this call only.
            hook.set_model(self)
            given.callbacks.insert(0, hook)
        else:
            # As Keras reads `callbacks`: a list, a tuple or a single callback.
            callbacks = [hook, *(keras.tree.flatten(callbacks) if callbacks else [])]
        try:
            return super().fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                verbose=verbose,
                callbacks=callbacks,
                **kwargs,
            )
        finally:
            if given is not None:
                given.callbacks.remove(hook)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """`keras.Model.train_on_batch`, with the checks of `fit`.

        Args and Returns: as `keras.Model.train_on_batch`.

        Raises:
            ValueError: for `y` that is not a dict, or `class_weight` (use
                `sample_weight`).
        """
        self._check_compiled()
        _check_y_argument(y)
        _check_class_weight(class_weight)
        logs = super().train_on_batch(
            x,
            y,
            sample_weight=self._complete_sample_weight(x, sample_weight),
            return_dict=True,
        )
        # With several replicas the step leaves these to the end of an epoch.
        logs.update(self._replica_step_logs())
        return logs if return_dict else self._flatten_metrics_in_order(logs)

    def _state_logs(self) -> dict:
        """The logs read from state: the balancer's, and `skipped_steps` with
        `nonfinite="skip"`."""
        logs = dict(self.balancer.logs())
        if self._engine.nonfinite == "skip":
            logs["skipped_steps"] = self._skipped_steps
        return logs

    def _replica_step_logs(self) -> dict:
        """With several replicas, `_state_logs` as numbers: the training step
        leaves them out (see `train_step`); else `{}`."""
        if self.distribute_strategy.num_replicas_in_sync == 1:
            return {}
        return {k: float(ops.convert_to_numpy(v)) for k, v in self._state_logs().items()}

    def evaluate(
        self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, **kwargs
    ):
        """`keras.Model.evaluate`, with `y` checked to be a dict of labels.

        Args and Returns: as `keras.Model.evaluate`.
        """
        _check_y_argument(y)
        return super().evaluate(
            x,
            y,
            batch_size=batch_size,
            verbose=verbose,
            sample_weight=self._complete_sample_weight(x, sample_weight),
            **kwargs,
        )

    def _complete_sample_weight(self, x, sample_weight):
        """A `sample_weight` dict with weights of 1 for the tasks it leaves out.

        Keras wants one array per output; a dict naming only the tasks with
        missing labels is what users write.
        """
        if not isinstance(sample_weight, dict) or self.task_names is None:
            return sample_weight
        self._check_task_dict("sample_weight", sample_weight, self.task_names, required=False)
        first = keras.tree.flatten(x)[0] if x is not None else None
        if all(t in sample_weight for t in self.task_names) or not hasattr(first, "shape"):
            return sample_weight
        ones = np.ones((first.shape[0],), "float32")
        return {t: sample_weight.get(t, ones) for t in self.task_names}

    # ----------------------------------------------------------------- saving
    def load_own_variables(self, store):
        # The model's own state (`_make_state_variables`) is made by `compile`:
        # a compiled model's file also loads into an uncompiled model
        # (`load_model(compile=False)`, `load_weights`), which makes the state
        # from the file, and an uncompiled model's file into a compiled one,
        # which keeps its own.
        keys = list(store.keys())
        own = self._trainable_variables + self._non_trainable_variables
        if not own and len(keys) == 2:
            locked = self._tracker.locked
            self._tracker.unlock()
            try:
                self._make_state_variables(store["0"].shape[0])
            finally:
                if locked:
                    self._tracker.lock()
        elif own and not keys:
            return
        super().load_own_variables(store)

    def get_compile_config(self):
        if not self.compiled or self._engine is None:
            return None
        serialize = keras.saving.serialize_keras_object
        resolved = dict(zip(self.task_names, self._resolved_losses, strict=True))
        return {
            "optimizer": serialize(self.optimizer),
            "loss": {t: _serialize_loss(v, resolved[t]) for t, v in self._losses_config.items()},
            "balancer": balancers_module.serialize(self.balancer),
            "metrics": None
            if self._metrics_config is None
            else {t: serialize(v) for t, v in self._metrics_config.items()},
            **self._gradient_config,
            "run_eagerly": self.run_eagerly,
            "steps_per_execution": self.steps_per_execution,
            "jit_compile": self.jit_compile,
            "auto_scale_loss": self._auto_scale_loss,
        }

    def compile_from_config(self, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        config["optimizer"] = deserialize(config["optimizer"])
        losses = config["loss"]
        config["loss"] = {t: _deserialize_loss(v) for t, v in losses.items()}
        config["balancer"] = balancers_module.deserialize(config["balancer"])
        if config.get("metrics") is not None:
            config["metrics"] = {t: deserialize(v) for t, v in config["metrics"].items()}
        self.compile(**config)
        # A loss given as a config dict is saved again as it was given: the
        # object it makes may not give it back (Keras's `Huber.get_config`
        # drops `delta`).
        self._losses_config.update({t: v for t, v in losses.items() if isinstance(v, dict)})
        if self.built:
            # Create the optimizer variables so that their saved values load.
            self.optimizer.build(self.trainable_variables)


@keras.saving.register_keras_serializable(package="keras_mtl")
class FunctionalMultiTaskModel(MultiTaskModel, Functional):
    """The class of `MultiTaskModel(inputs, outputs)`; use `MultiTaskModel`.

    `MultiTaskModel(inputs=..., outputs=...)` returns an instance of this
    subclass of both `MultiTaskModel` and Keras's functional model, as
    `keras.Model(inputs, outputs)` returns a `Functional`; it is registered
    for serialisation under this name.

    Example:

    >>> import keras, numpy as np, keras_mtl
    >>> x = keras.Input((2,))
    >>> outputs = {
    ...     "a": keras.layers.Dense(1, kernel_initializer="ones", name="a")(x),
    ...     "b": keras.layers.Dense(1, kernel_initializer="zeros", name="b")(x),
    ... }
    >>> model = keras_mtl.MultiTaskModel(inputs=x, outputs=outputs)
    >>> type(model).__name__, isinstance(model, keras_mtl.MultiTaskModel)
    ('FunctionalMultiTaskModel', True)
    >>> {t: np.asarray(y).tolist() for t, y in model(np.array([[1.0, 2.0]], "float32")).items()}
    {'a': [[3.0]], 'b': [[0.0]]}
    """


def _functional_arguments(args, kwargs) -> bool:
    return len(args) == 2 or len(args) == 1 and "outputs" in kwargs or "inputs" in kwargs


class _LossMeans(keras.metrics.Metric):
    """`loss` and `<task>_loss` over the batches seen since the last reset.

    `<task>_loss` is the mean over the task's labelled examples: each batch's
    loss counts with its number of labels (with the sum of their weights for
    `reduction="mean_with_sample_weight"`). Keras's mean over batches would
    count a batch without labels for the task as a loss of 0 for a whole
    batch, which makes `evaluate` depend on `batch_size`. `loss` adds the
    tasks' weighted losses, averaged the same way, and the regularisation,
    averaged over examples; with every label present it is the mean of the
    batches' objectives. A task without any label gets `<task>_loss` 0, as
    in each batch; `loss` is NaN when every step was skipped (`nonfinite=
    "skip"`), where 0 would look like a perfect epoch to callbacks.
    """

    def __init__(self, task_names):
        super().__init__(name="loss")
        self.keys = [f"{name}_loss" for name in task_names]
        shape = (len(task_names),)
        self.task_losses = self.add_variable(shape=shape, initializer="zeros", name="losses")
        self.weighted = self.add_variable(shape=shape, initializer="zeros", name="weighted")
        self.labels = self.add_variable(shape=shape, initializer="zeros", name="labels")
        self.regularization = self.add_variable(shape=(), initializer="zeros", name="reg")
        self.examples = self.add_variable(shape=(), initializer="zeros", name="examples")

    def update_state(self, losses, weights, counts, regularization, batch):
        totals = ops.cast(losses, self.dtype) * ops.cast(counts, self.dtype)
        self.task_losses.assign_add(totals)
        self.weighted.assign_add(totals * ops.cast(weights, self.dtype))
        self.labels.assign_add(ops.cast(counts, self.dtype))
        self.regularization.assign_add(ops.cast(regularization, self.dtype) * batch)
        self.examples.assign_add(ops.cast(batch, self.dtype))

    def result(self):
        weighted = ops.sum(ops.divide_no_nan(self.weighted, self.labels))
        loss = weighted + self.regularization / self.examples
        means = ops.unstack(ops.divide_no_nan(self.task_losses, self.labels))
        return {"loss": loss, **dict(zip(self.keys, means, strict=True))}


class _TaskWeightMeans(keras.metrics.Metric):
    """`<task>_weight`: the task's weight averaged over the steps where it had
    labels; 0 if it had none, like its `<task>_loss` (the weights a balancer
    gives a task without labels are not applied, and may be meaningless:
    DB-MTL's `1 / L_t` at `L_t = 0`).

    One metric for all tasks: T scalar `Mean` trackers cost T times the ops
    per step, which is measurable next to a small model's step.
    """

    def __init__(self, task_names):
        super().__init__(name="task_weights")
        self.keys = [f"{name}_weight" for name in task_names]
        shape = (len(task_names),)
        self.total = self.add_variable(shape=shape, initializer="zeros", name="total")
        self.count = self.add_variable(shape=shape, initializer="zeros", name="count")

    def update_state(self, values, sample_weight):
        weight = ops.cast(sample_weight, self.dtype)
        self.total.assign_add(ops.cast(values, self.dtype) * weight)
        self.count.assign_add(weight)

    def result(self):
        means = ops.unstack(ops.divide_no_nan(self.total, self.count))
        return dict(zip(self.keys, means, strict=True))


class _BalancerEpochHook(keras.callbacks.Callback):
    """Tells the balancer when an epoch begins and ends (for per-epoch methods
    such as DWA) and, with several replicas, adds its logs and `skipped_steps` to the
    epoch's."""

    def __init__(self, model):
        super().__init__()
        self._mtl_model = model

    def on_epoch_begin(self, epoch, logs=None):
        self._mtl_model.balancer.on_epoch_begin(epoch)

    def on_epoch_end(self, epoch, logs=None):
        model = self._mtl_model
        model.balancer.on_epoch_end(epoch)
        if logs is not None:
            logs.update(model._replica_step_logs())


class _Crossentropy:
    """What `_resolve_loss` gives for the `"crossentropy"` / `"ce"` alias: the
    step picks the loss from the shapes (`_crossentropy_for`)."""

    def __repr__(self):
        return "crossentropy"


_CROSSENTROPY = _Crossentropy()


def _resolve_loss(task: str, identifier):
    """The `keras.losses.Loss` or function that `identifier` names, or
    `_CROSSENTROPY` for Keras's `"crossentropy"` / `"ce"` alias (any case)."""
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in ("crossentropy", "ce"):
        return _CROSSENTROPY
    if identifier is None:
        # Keras leaves such an output out of training; here every output is
        # a task (its name is the output's key).
        raise ValueError(
            f"Received loss None for task '{task}', expected a loss: every output of a "
            "MultiTaskModel is a task. For an output that is only predicted (an embedding, "
            "gate weights), build a second `keras.Model` on the same layers. Received: "
            f"loss={{'{task}': None}}"
        )
    try:
        # Instantiates a class, as Keras's `compile` does.
        fn = keras.losses.get(identifier)
    except (ValueError, TypeError):
        fn = None
    if not callable(fn):  # None for an unknown name; `int` would give 0
        raise ValueError(
            f"Received an invalid loss for task '{task}', expected a loss name (or "
            "'crossentropy'), function, config dict, or keras.losses.Loss instance or class. "
            f"Received: loss={{'{task}': {identifier!r}}}"
        )
    return fn


def _crossentropy_for(task: str, labels, predictions):
    """The loss that the `"crossentropy"` alias stands for, as Keras's `get_loss`
    and `is_binary_or_sparse_categorical` (keras/src/trainers/compile_utils.py)
    choose it from the shapes of the labels and predictions: binary for
    predictions of last dimension 1, else sparse categorical for labels of a
    lower rank than the predictions or of last dimension 1, else categorical."""
    try:
        label_rank, rank = len(labels), len(predictions)
    except ValueError:  # a shape of unknown rank
        raise ValueError(
            f"The loss 'crossentropy' of task '{task}' is chosen from the shapes of its labels "
            "and predictions, expected shapes of known rank. Received: labels of shape "
            f"{labels} and predictions of shape {predictions}; name the loss instead"
        ) from None
    width = predictions[-1] if rank else None
    if width == 1:
        return keras.losses.binary_crossentropy
    # Keras compares an unknown prediction width with `> 1` and fails; a label
    # width of 1 then means class indices here.
    if label_rank < rank or labels[-1] == 1 and (width is None or width > 1):
        return keras.losses.sparse_categorical_crossentropy
    return keras.losses.categorical_crossentropy


def _serialize_loss(identifier, resolved):
    """A task's loss for the compile config, as given; a class (which
    `keras.losses.get` instantiates, and which Keras cannot save) as the
    instance it made."""
    if isinstance(identifier, type):
        return keras.saving.serialize_keras_object(resolved)
    return keras.saving.serialize_keras_object(identifier)


def _deserialize_loss(config):
    """A task's loss from the compile config: saved as given, a config dict
    may be the short form that `keras.losses.get` takes (`{"class_name":
    "Huber", "config": {...}}`, no module), which only Keras's loss module
    finds."""
    try:
        return keras.saving.deserialize_keras_object(config)
    except TypeError:  # "Could not locate class ..."
        if not isinstance(config, dict):
            raise
        loss = keras.losses.deserialize(config)
        if isinstance(loss, str):  # not a loss of Keras's either: the first error says why
            raise
        return loss


def _loss_fn(fn):
    """A function giving the per-example (unreduced) losses of the resolved
    loss `fn` (see `_resolve_loss`); `None` for `_CROSSENTROPY`, chosen in the
    step."""
    if fn is _CROSSENTROPY:
        return None
    if isinstance(fn, keras.losses.Loss):
        loss = fn

        def converted(y_true, y_pred):
            # As `Loss.__call__`: labels and predictions in the loss's dtype
            # (integer labels included), which a loss written with `tf` ops
            # relies on.
            return loss.call(
                ops.convert_to_tensor(y_true, dtype=loss.dtype),
                ops.convert_to_tensor(y_pred, dtype=loss.dtype),
            )

        return converted

    def aligned(y_true, y_pred):
        # As plain Keras does for loss functions (its `LossFunctionWrapper`):
        # both in the default float type, and labels of shape (batch,)
        # against predictions (batch, 1) brought to one rank, which would
        # otherwise broadcast to (batch, batch) in some losses (hinge,
        # Poisson, KL) and fail in others.
        dtype = keras.config.floatx()
        y_true, y_pred = squeeze_or_expand_to_same_rank(
            ops.convert_to_tensor(y_true, dtype=dtype), ops.convert_to_tensor(y_pred, dtype=dtype)
        )
        return fn(y_true, y_pred)

    return aligned


def _reduction(task: str, identifier, fn) -> str:
    """The reduction of a task's resolved loss `fn`, checked: each task's loss
    is a mean. `identifier` is what the user passed, for the message."""
    reduction = getattr(fn, "reduction", None)
    if reduction == "sum":
        raise ValueError(
            f"Received a loss with reduction='sum' for task '{task}', expected a mean "
            "('sum_over_batch_size', 'mean' or 'mean_with_sample_weight'): a task's loss is "
            "averaged over its labelled examples, so that examples without a label do not "
            "change its scale. Scale the task with `balancer=keras_mtl.balancers."
            "StaticWeighting({...})` or the learning rate instead. Received: "
            f"loss={{'{task}': {identifier!r}}}"
        )
    return reduction or "sum_over_batch_size"


def _is_keras_loss(fn) -> bool:
    """Whether the resolved loss `fn` (see `_resolve_loss`) is one of Keras's own."""
    owner = fn if callable(fn) and not isinstance(fn, keras.losses.Loss) else type(fn)
    return getattr(owner, "__module__", "").startswith("keras.")


def _check_label_width(task: str, labels, predictions) -> None:
    # Keras's losses broadcast labels of another width against the
    # predictions without a word; sparse labels have width 1. Custom losses
    # may read wider labels, so only Keras's own are checked.
    try:
        same_rank = len(labels) == len(predictions) > 0
    except ValueError:  # a shape of unknown rank
        # Every Keras loss takes the ranks (to squeeze or expand the labels)
        # and would fail without naming the task, as plain Keras does.
        raise ValueError(
            f"Expected the labels and predictions of task '{task}' to have shapes of known "
            f"rank: Keras's losses need them. Received: y['{task}'] with shape "
            f"{labels} and predictions of shape {predictions}; give the labels a static "
            "rank (e.g. `tf.data` with `output_signature` shapes such as (None, 1))"
        ) from None
    if not same_rank:
        return
    width, expected = labels[-1], predictions[-1]
    if width is not None and expected is not None and width not in (1, expected):
        allowed = "1" if expected == 1 else f"1 or {expected}"
        raise ValueError(
            f"Expected the labels of task '{task}' to have a last dimension of {allowed}, "
            f"like its predictions of shape {tuple(predictions)}. Received: y['{task}'] with "
            f"shape {tuple(labels)}"
        )


def _check_class_weight(class_weight) -> None:
    if class_weight is not None:
        # Keras applies class weights to single-output models only (its
        # `train_on_batch` fails on a dict `y` with an IndexError).
        raise ValueError(
            "`class_weight` is not supported by MultiTaskModel: pass per-example weights "
            "with `sample_weight={task: weights}` instead. Received: "
            f"class_weight={class_weight!r}"
        )


def _check_y_argument(y) -> None:
    # Checked before Keras turns a list into a tuple and an array into a tensor.
    if y is not None and not isinstance(y, dict):
        raise ValueError(
            "Expected `y` to be a dict {task_name: labels}. Received: y of type "
            f"{type(y).__name__}"
        )


def _check_metrics(metrics) -> None:
    """Resolves metric names now, so that a typo names its task and `metrics`."""
    for task, entries in (metrics or {}).items():
        for entry in entries if isinstance(entries, list | tuple) else [entries]:
            # Keras picks the accuracy and crossentropy variants from the labels.
            if not isinstance(entry, str) or entry.lower() in (
                "accuracy",
                "acc",
                "crossentropy",
                "ce",
            ):
                continue
            try:
                keras.metrics.get(entry)
            except ValueError:
                raise ValueError(
                    f"Received an unknown metric for task '{task}', expected a metric name, "
                    f"function or keras.metrics.Metric. Received: metrics={{'{task}': "
                    f"{entries!r}}}"
                ) from None
