"""The per-task gradient engine, the only TensorFlow-specific part of keras_mtl.

One training step: forward once under a `tf.GradientTape`, per-task losses,
then, by mode:

- `"weighted"` (loss-only balancers): the balancer gives weights from the
  losses and one backward pass of the weighted loss updates every variable.
- `"loop"`: one `tape.gradient` per task; the shared rows form the Jacobian
  `J` (T x P); the balancer's direction goes to the shared variables, every
  other variable gets `sum_t w_t g_t` (its own task's gradient times the
  task weight).
- `"jacobian"`: `J` from `tape.jacobian` (vectorised) over the shared
  variables, then one weighted backward for the others.
- `"representation"`: `J` holds gradients with respect to the tensor marked
  by `SharedRepresentation` (T x B*d); the balanced gradient is backpropagated
  through the trunk once (MGDA-UB).
- `"scoped"` (balancers with `jacobian_scope="last_shared_layer"`): `J` of
  the last shared layer only gives the weights; one backward of the weighted
  loss gives the update (GradNorm).

Under `tf.distribute`, losses and `J` are all-reduced before the balancer runs,
so every replica computes the update of the global batch; the optimizer sums
what the replicas apply, hence the division by the number of replicas. In
representation mode the rows of `J` are per example: they are gathered, not
summed, and each replica backpropagates its own examples' part of the
direction. Whether a step is skipped (`nonfinite="skip"`, loss scaling) is
decided alike on every replica.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import tensorflow as tf

from keras_mtl.gradients.flatten import jacobian_rows, unflatten
from keras_mtl.layers.shared_representation import SharedRepresentation

MODES = ("auto", "loop", "jacobian", "representation")
NONFINITE = ("raise", "skip")


class GradientEngine:
    """Computes and applies one balanced training step of a `MultiTaskModel`.

    Args:
        mode: one of `"auto"`, `"loop"`, `"jacobian"`, `"representation"`.
        shared_layers: `None` to find the shared variables on the first step
            (those that receive gradient from more than one task), or a list of
            layers (or layer names) whose trainable variables are the shared
            ones.
        nonfinite: `"raise"` to stop on a non-finite loss or update, `"skip"`
            to skip such steps (counted in the `skipped_steps` log).

    Raises:
        ValueError: for an unknown `mode` or `nonfinite`.

    Example:

    `MultiTaskModel.compile` makes the engine; `resolve_mode` says how it
    will take the per-task gradients for the compiled balancer.

    >>> import keras, keras_mtl
    >>> from keras_mtl.gradients import GradientEngine
    >>> x = keras.Input((4,))
    >>> h = keras_mtl.layers.SharedRepresentation()(keras_mtl.layers.SharedBottom(units=(8,))(x))
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs=x,
    ...     outputs={"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)},
    ... )
    >>> model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"}, balancer="mgda_ub")
    >>> GradientEngine().resolve_mode(model), GradientEngine("loop").resolve_mode(model)
    ('representation', 'loop')
    >>> model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"}, balancer="ew")
    >>> GradientEngine("jacobian").resolve_mode(model)  # loss weighting: one backward pass
    'weighted'
    """

    def __init__(self, mode: str = "auto", shared_layers=None, nonfinite: str = "raise"):
        if mode not in MODES:
            raise ValueError(
                f"Received an invalid value for `gradient_mode`, expected one of {list(MODES)}. "
                f"Received: gradient_mode={mode!r}"
            )
        if nonfinite not in NONFINITE:
            raise ValueError(
                f"Received an invalid value for `nonfinite`, expected one of {list(NONFINITE)}. "
                f"Received: nonfinite={nonfinite!r}"
            )
        self.mode = mode
        self.shared_layers = shared_layers
        self.nonfinite = nonfinite
        # Paths of the shared variables, known after the first traced step.
        self.shared_variable_paths: list[str] | None = None
        # The trainable variables `prepare` last ran for.
        self._prepared_for: tuple | None = None

    # ------------------------------------------------------------------ setup
    def resolve_mode(self, model) -> str:
        """The mode the engine runs for `model.balancer` (see module docstring)."""
        balancer = model.balancer
        if not balancer.requires_jacobian:
            return "weighted"
        if balancer.jacobian_scope == "last_shared_layer":
            return "scoped"
        if self.mode == "auto":
            if balancer.preferred_gradient_mode == "representation" and representation_layer(
                model, required=False
            ):
                return "representation"
            if balancer.preferred_gradient_mode in ("loop", "jacobian"):
                return balancer.preferred_gradient_mode
            return "loop"
        if self.mode == "representation":
            representation_layer(model, required=True)
        return self.mode

    def _shared_indices(self, model, variables, reach) -> list[int]:
        if self.shared_layers is not None:
            wanted = set()
            for layer in resolve_shared_layers(model, self.shared_layers):
                if not layer.trainable_variables:
                    frozen = ""
                    if layer.weights:
                        frozen = (
                            " (its variables are non-trainable)"
                            if layer.trainable
                            else " (it is frozen: trainable=False)"
                        )
                    raise ValueError(
                        "Expected every layer in `shared_layers` to have trainable variables; "
                        f"layer '{layer.name}' has none{frozen}. "
                        f"Received: shared_layers={[getattr(s, 'name', s) for s in self.shared_layers]}"
                    )
                wanted.update(id(v) for v in layer.trainable_variables)
            indices = [i for i, v in enumerate(variables) if id(v) in wanted]
        else:
            indices = [i for i in range(len(variables)) if sum(r[i] for r in reach) > 1]
        if not indices:
            frozen = _frozen_layers(model)
            raise ValueError(
                f"The balancer `{type(model.balancer).__name__}` needs per-task gradients of "
                "shared variables, but no trainable variable receives gradient from more than "
                "one task. Share a trunk between the task outputs, pass "
                "`compile(shared_layers=[...])`, or use a loss-weighting balancer such as 'ew'."
                + (
                    f" The model's frozen layers (trainable=False), whose variables take no "
                    f"gradient: {frozen}."
                    if frozen
                    else ""
                )
            )
        self.shared_variable_paths = [variables[i].path for i in indices]
        return indices

    def prepare(self, model) -> None:
        """Finds the shared variables before training and tells the balancer
        their size, so that per-parameter balancer state is created eagerly
        (under a distribution strategy too) rather than inside the first
        traced step.

        Runs one forward and backward pass on a zero example of the model's
        input structure (connectivity does not depend on the values), once
        per set of trainable variables: later `fit` calls reuse the result.
        Does nothing for loss-only balancers, representation mode (whose
        Jacobian width depends on the batch), or models without a known input
        structure.

        Args:
            model: the `MultiTaskModel`.
        """
        structure = getattr(model, "_inputs_struct", None)
        if structure is None or self.resolve_mode(model) not in ("loop", "jacobian"):
            return
        dummy = keras.tree.map_structure(
            lambda t: tf.zeros([1] + [d or 1 for d in t.shape[1:]], t.dtype), structure
        )
        variables = [
            v
            for v in model.trainable_variables
            if id(v) not in {id(b) for b in model.balancer.trainable_variables}
        ]
        key = tuple(id(v) for v in variables)
        if key == self._prepared_for:
            return
        found = {}

        def probe():
            with tf.GradientTape(persistent=True) as tape:
                outputs = model(dummy, training=False)
                totals = [tf.reduce_sum(tf.cast(outputs[t], tf.float32)) for t in model.task_names]
            found["reach"] = [[g is not None for g in tape.gradient(t, variables)] for t in totals]

        # In replica context: distributed variables are read there only.
        model.distribute_strategy.run(probe)
        shared = self._shared_indices(model, variables, found["reach"])
        model.balancer.prepare(sum(int(tf.size(variables[i])) for i in shared))
        self._prepared_for = key

    # ------------------------------------------------------------------- step
    def train_step(self, model, x, y, sample_weight) -> dict:
        """Runs forward, balancing and the optimizer update for one batch.

        Args:
            model: the `MultiTaskModel`.
            x, y, sample_weight: the batch, `y` and `sample_weight` as dicts.

        Returns:
            A dict with `losses` (T,), `weights` (T,), `counts` (T,) of
            labelled examples, `regularization`, `y_pred`, `y_true` (missing
            labels replaced by 0), `masks` and `finite`.
        """
        balancer = model.balancer
        optimizer = model.optimizer
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        mode = self.resolve_mode(model)
        rep_layer = representation_layer(model, required=True) if mode == "representation" else None
        # Loss scaling (mixed precision): gradients are taken of scaled losses,
        # the balancer sees unscaled ones, the optimizer unscales what it gets.
        # Without it no multiplication by 1 is spent on the (T, P) Jacobian.
        scale = None
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            scale = tf.cast(optimizer.scale_loss(tf.constant(1.0)), tf.float32)
        # The balancer's state before the step, restored when the step is
        # dropped: by "skip", or by the loss scale optimizer on an overflow.
        state = []
        if self.nonfinite == "skip" or scale is not None:
            state = [(v, tf.identity(v.value)) for v in balancer.non_trainable_variables]

        with tf.GradientTape(persistent=mode != "weighted") as tape:
            if rep_layer is not None:
                rep_layer._recorded = None
                rep_layer._recording = True
            try:
                y_pred = model(x, training=True)
            finally:
                if rep_layer is not None:
                    rep_layer._recording = False
            rep = None if rep_layer is None else _take_recorded(rep_layer)
            # Read after the forward pass: a subclassed model builds on its first call.
            variables = list(model.trainable_variables)
            balancer_ids = {id(v) for v in balancer.trainable_variables}
            model_vars = [v for v in variables if id(v) not in balancer_ids]
            balancer_vars = [v for v in variables if id(v) in balancer_ids]
            sums, counts, y_clean, masks = model.task_loss_terms(y, y_pred, sample_weight)
            counts = _all_reduce(ctx, tf.stack(counts), replicas)
            # One scalar per task, never sliced from a stacked vector: the
            # gradient of a slice is structurally connected to every task,
            # which would hide which variables a task reaches.
            # Counts are label counts, or sums of sample weights (possibly
            # below 1) for `reduction="mean_with_sample_weight"`; 0 (no
            # labels) divides by 1, the sum being 0 too.
            denominators = tf.unstack(tf.where(counts > 0, counts, 1.0))
            task_local = [s / d for s, d in zip(sums, denominators, strict=True)]
            local = tf.stack(task_local)
            regularization = model.regularization_loss()
            reg = regularization / replicas
            # Checked only where layers add losses; otherwise it is a constant 0.
            reg_check = reg if model.losses else None
            losses = tf.stop_gradient(_all_reduce(ctx, local, replicas))
            # Graph mode orders an assertion before nothing it does not feed:
            # the balancer reads `losses` through the identity, and the
            # update waits for every check.
            checks = []
            if self.nonfinite == "raise":
                checks = _check_losses_and_rate(losses, model.task_names, optimizer, reg_check)
                with tf.control_dependencies(checks):
                    losses = tf.identity(losses)
            # Everything differentiated later must be computed under the tape.
            step = _Step(
                model=model,
                tape=tape,
                task_targets=[_rescale(t, scale) for t in task_local],
                losses=losses,
                model_vars=model_vars,
                scale=scale,
                ctx=ctx,
                replicas=replicas,
                rep=rep,
                checks=checks,
            )
            if mode == "jacobian":
                targets = tf.stack(step.task_targets)
            reg_scaled = _rescale(reg, scale)
            with tf.control_dependencies(checks):
                balancer.observe(y_clean, y_pred, masks)
            if mode in ("weighted", "scoped"):
                if mode == "weighted":
                    weights = tf.stop_gradient(balancer.aggregate(None, losses).weights)
                else:
                    weights = self._scoped_weights(step)
                aux = balancer.auxiliary_loss(losses) / replicas
                objective = tf.reduce_sum(weights * local) + aux + reg
                scaled = _rescale(objective, scale)

        if mode in ("weighted", "scoped"):
            grads = tape.gradient(scaled, variables)
        else:
            if mode == "loop":
                model_grads, weights = self._loop(step)
            elif mode == "jacobian":
                model_grads, weights = self._jacobian(step, targets)
            else:
                model_grads, weights = self._representation(step)
            if model.losses:
                model_grads = _add(model_grads, tape.gradient(reg_scaled, model_vars))
            balancer_grads = []
            if balancer_vars:
                with tf.GradientTape() as aux_tape:
                    aux = _rescale(balancer.auxiliary_loss(losses), scale, replicas)
                balancer_grads = aux_tape.gradient(aux, balancer_vars)
            by_id = dict(
                zip(
                    [id(v) for v in model_vars + balancer_vars],
                    list(model_grads) + list(balancer_grads),
                    strict=True,
                )
            )
            grads = [by_id[id(v)] for v in variables]
        del tape, step  # release the persistent tape's resources before the update

        finite = self._apply(
            model, grads, variables, losses, weights, state, checks, reg_check, ctx, replicas
        )
        return {
            "losses": losses,
            "weights": weights,
            "counts": counts,
            "regularization": regularization,
            "y_pred": y_pred,
            "y_true": y_clean,
            "masks": masks,
            "finite": finite,
        }

    # ------------------------------------------------------------------ modes
    def _shared_jacobian(self, step, per_task, indices):
        """The balancer's input: unscaled, all-reduced rows of `indices`' gradients."""
        variables = [step.model_vars[i] for i in indices]
        jac = jacobian_rows([[gs[i] for i in indices] for gs in per_task], variables)
        return _all_reduce(step.ctx, _unscale(jac, step.scale), step.replicas), variables

    def _loop(self, step):
        per_task = [step.tape.gradient(t, step.model_vars) for t in step.task_targets]
        reach = [[g is not None for g in gs] for gs in per_task]
        shared = self._shared_indices(step.model, step.model_vars, reach)
        jac, shared_vars = self._shared_jacobian(step, per_task, shared)
        result = _aggregate(step, jac)
        weights = tf.stop_gradient(result.weights)
        direction = unflatten(_rescale(result.direction, step.scale, step.replicas), shared_vars)
        return _place(_weighted_sum(per_task, weights), shared, direction), weights

    def _jacobian(self, step, targets):
        model_vars = step.model_vars
        # Connectivity only: these gradient ops feed nothing and are pruned.
        reach = [
            [g is not None for g in step.tape.gradient(t, model_vars)] for t in step.task_targets
        ]
        shared = self._shared_indices(step.model, model_vars, reach)
        shared_vars = [model_vars[i] for i in shared]
        rows = step.tape.jacobian(
            targets,
            shared_vars,
            experimental_use_pfor=True,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        num_tasks = len(step.task_targets)
        jac = tf.concat([tf.reshape(tf.cast(r, tf.float32), [num_tasks, -1]) for r in rows], 1)
        jac = _all_reduce(step.ctx, _unscale(jac, step.scale), step.replicas)
        result = _aggregate(step, jac)
        weights = tf.stop_gradient(result.weights)
        others = [i for i in range(len(model_vars)) if i not in set(shared)]
        other_grads = step.tape.gradient(
            targets, [model_vars[i] for i in others], output_gradients=weights
        )
        grads = _place([None] * len(model_vars), others, other_grads)
        direction = unflatten(_rescale(result.direction, step.scale, step.replicas), shared_vars)
        return _place(grads, shared, direction), weights

    def _representation(self, step):
        model_vars, rep, tape = step.model_vars, step.rep, step.tape
        trunk_grads = tape.gradient(rep, model_vars)
        trunk = [i for i, g in enumerate(trunk_grads) if g is not None]
        if not trunk:
            frozen = _frozen_layers(step.model)
            received = f"gradient_mode={self.mode!r}"
            if self.mode == "auto":
                received += (
                    ", which takes representation gradients for "
                    f"`{type(step.model.balancer).__name__}`"
                )
            raise ValueError(
                "Representation gradients need trainable variables before the "
                f"SharedRepresentation layer '{representation_layer(step.model, True).name}' "
                "(the shared trunk that the balanced gradient is backpropagated through), but "
                "none of the model's trainable variables feeds it."
                + (
                    f" The model's frozen layers (trainable=False), whose variables take no "
                    f"gradient: {frozen}."
                    if frozen
                    else ""
                )
                + " Expected the layer after a trainable shared trunk, or "
                "gradient_mode='loop' (per-task gradients of the shared variables). "
                f"Received: {received}"
            )
        self.shared_variable_paths = [model_vars[i].path for i in trunk]
        others = [i for i in range(len(model_vars)) if i not in set(trunk)]
        sources = [rep] + [model_vars[i] for i in others]
        per_task = [tape.gradient(t, sources) for t in step.task_targets]
        # A task that does not reach the representation has a zero row.
        rows = [[tf.zeros_like(rep) if gs[0] is None else gs[0]] for gs in per_task]
        jac = _unscale(jacobian_rows(rows, [rep]), step.scale)
        value = tf.stop_gradient(tf.cast(rep, tf.float32))
        if step.replicas > 1:
            jac, value, own_rows = _gather_examples(step.ctx, jac, value)
        result = _aggregate(step, jac, representation=value)
        weights = tf.stop_gradient(result.weights)
        other_grads = _weighted_sum([gs[1:] for gs in per_task], weights)
        direction = result.direction
        if step.replicas > 1:
            # Not divided by the replicas: each backpropagates only its own
            # examples' rows, and the optimizer's sum over the replicas puts
            # the global backward pass together.
            direction = own_rows(direction)
        rep_grad = tf.cast(tf.reshape(_rescale(direction, step.scale), tf.shape(rep)), rep.dtype)
        trunk_vars = [model_vars[i] for i in trunk]
        grads = _place([None] * len(model_vars), others, other_grads)
        trunk_grads = tape.gradient(rep, trunk_vars, output_gradients=rep_grad)
        return _place(grads, trunk, trunk_grads), weights

    def _scoped_weights(self, step):
        model_vars = step.model_vars
        per_task = [step.tape.gradient(t, model_vars) for t in step.task_targets]
        reach = [[g is not None for g in gs] for gs in per_task]
        shared = self._shared_indices(step.model, model_vars, reach)
        # The last shared layer: the layer that owns the last shared variable.
        last_layer = model_vars[shared[-1]].path.rsplit("/", 1)[0]
        scope = [i for i in shared if model_vars[i].path.rsplit("/", 1)[0] == last_layer]
        jac, _ = self._shared_jacobian(step, per_task, scope)
        return tf.stop_gradient(_aggregate(step, jac).weights)

    # ------------------------------------------------------------------ apply
    def _apply(self, model, grads, variables, losses, weights, state, checks, reg, ctx, replicas):
        optimizer = model.optimizer
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        applied_grads = [g for g, _ in pairs]
        applied_vars = [v for _, v in pairs]

        scaled_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        # The loss scale optimizer skips an overflowing step by itself, but
        # what the balancer wrote into its state from the overflowing
        # Jacobian would stay and spoil every later step (DB-MTL's moving
        # averages, GradNorm's weights).
        # Keras's loss scale optimizer misses an overflow in a sparse
        # gradient (an embedding's) in a row that the batch looks up again:
        # its test scatters the values into a dense tensor, which keeps only
        # the last of a repeated index's rows. With several replicas it also
        # decides from the first replica's gradients alone. In both cases the
        # engine tests every gradient and puts its decision where the
        # optimizer cannot miss it (`_poison`).
        sparse = any(isinstance(g, tf.IndexedSlices) for g in applied_grads)
        no_overflow = None
        if scaled_loss and (state or replicas > 1 or sparse):
            no_overflow = _agree(ctx, _all_finite(applied_grads), replicas)
            if replicas > 1 or sparse:
                applied_grads = _poison(applied_grads, no_overflow)
        if self.nonfinite == "raise" and not scaled_loss:
            # The loss scale optimizer skips overflowing steps by itself.
            checks = checks + _assertion(
                _all_finite(applied_grads),
                [
                    "Non-finite gradient or balanced direction although every task loss is "
                    "finite; the update was not applied. Task losses:",
                    losses,
                ],
            )

        def update():
            # The balancer may have read variables that the optimizer now
            # writes (its own trainable ones). Grappler's dependency optimizer
            # drops the read -> write control edges that tf.function adds
            # when no data path joins them, and the read can then see the
            # updated value (measured: about 1 run in 30 of IMTL diverged).
            # A control edge from the weights, which every such read feeds,
            # survives.
            if not optimizer.built:
                # Outside the dependency: XLA cannot lift slot variables whose
                # creation depends on a tensor of the step.
                optimizer.build(applied_vars)
            with tf.control_dependencies([weights, *checks]):
                optimizer.apply(applied_grads, applied_vars)
            return tf.constant(True)

        if self.nonfinite == "raise":
            _restore(state, no_overflow)
            return update()
        finite = tf.logical_and(
            _all_finite([losses, _learning_rate(optimizer)] + ([] if reg is None else [reg])),
            tf.constant(True) if scaled_loss else _all_finite(applied_grads),
        )
        # Each replica checks its own gradients (the task-specific ones are
        # its share of the global sum): the step is skipped everywhere if any
        # replica finds one non-finite.
        finite = _agree(ctx, finite, replicas)
        _restore(state, finite if no_overflow is None else tf.logical_and(finite, no_overflow))
        if replicas == 1 or tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite, update, lambda: tf.constant(False))
            return finite
        if not optimizer.built:
            optimizer.build(applied_vars)

        def apply(grads, weights):
            with tf.control_dependencies([weights]):
                optimizer.apply(grads, applied_vars)

        def skip_or_apply(distribution, finite, grads, weights):
            # A strategy cannot run a `tf.cond` in replica context whose
            # branch makes a `merge_call` (the optimizer's update does): the
            # branch is taken in cross-replica context, as Keras's loss scale
            # optimizer does. `finite` is the same on every replica.
            def run():
                distribution.extended.call_for_each_replica(apply, args=(grads, weights))
                return tf.constant(True)

            first = distribution.experimental_local_results(finite)[0]
            tf.cond(first, run, lambda: tf.constant(False))

        ctx.merge_call(skip_or_apply, args=(finite, applied_grads, weights))
        return finite


def resolve_shared_layers(model, shared_layers) -> list:
    """The layers that `compile(shared_layers=...)` names, checked against `model`.

    Args:
        model: a Keras model.
        shared_layers: a non-empty list of layers of `model` or of their names
            (nested layers included).

    Returns:
        The layers, in the order given.

    Raises:
        ValueError: when `shared_layers` is not a non-empty list or tuple, holds
            something other than a layer or a name, or names a layer that is not
            in the model.

    Example:

    >>> import keras, keras_mtl
    >>> from keras_mtl.gradients.engine import resolve_shared_layers
    >>> x = keras.Input((3,))
    >>> model = keras.Model(x, keras_mtl.layers.SharedBottom(units=(4,), name="trunk")(x))
    >>> [layer.name for layer in resolve_shared_layers(model, ["trunk"])]
    ['trunk']
    """
    if not isinstance(shared_layers, list | tuple) or not shared_layers:
        raise ValueError(
            "Expected `shared_layers` to be a non-empty list of layers or layer names. "
            f"Received: shared_layers={shared_layers!r}"
        )
    layers = list(model._flatten_layers(include_self=False))
    resolved = []
    for entry in shared_layers:
        if isinstance(entry, str):
            layer = find_layer(model, entry)
        elif isinstance(entry, keras.layers.Layer):
            layer = entry if any(entry is known for known in layers) else None
        else:
            raise ValueError(
                "Expected `shared_layers` to hold layers or layer names. Received: "
                f"shared_layers={shared_layers!r} with an element of type {type(entry).__name__}"
            )
        if layer is None:
            raise ValueError(
                f"Layer {getattr(entry, 'name', entry)!r} in `shared_layers` is not a layer of the "
                f"model. The model's layers: {[known.name for known in layers]}"
            )
        resolved.append(layer)
    return resolved


def find_layer(model, name: str):
    """The layer of `model` called `name`, nested layers included.

    `keras.Model.get_layer` sees only the top-level layers, but a shared
    layer is often inside one (a `SharedBottom`'s dense layers).

    Args:
        model: a Keras model.
        name: the layer name, or a path of names from a top-level layer down
            to the layer, joined by `/` (`"trunk/dense_0"`; `layer_path`),
            for a name that several layers have.

    Returns:
        The layer, or `None` when the model has no layer of that name.

    Raises:
        ValueError: when several layers of the model have that name (or path).

    Example:

    >>> import keras, keras_mtl
    >>> from keras_mtl.gradients.engine import find_layer
    >>> x = keras.Input((3,))
    >>> h = keras_mtl.layers.SharedBottom(units=(4, 2), name="trunk")(x)
    >>> find_layer(keras.Model(x, h), "dense_1").name
    'dense_1'
    >>> find_layer(keras.Model(x, h), "trunk/dense_1").name
    'dense_1'
    """
    found = _layers_named(model, name)
    if len(found) > 1:
        raise ValueError(
            f"Layer name {name!r} in `shared_layers` is ambiguous: the model has {len(found)} "
            "layers of that name. Pass the layer objects, or paths of names such as "
            "'outer/inner'."
        )
    return found[0] if found else None


def layer_path(model, layer) -> str:
    """A name that `find_layer` resolves to `layer` in `model`: its name when
    no other layer has it, else the path of names from a top-level layer.

    Args:
        model: a Keras model.
        layer: one of its layers (nested layers included).

    Returns:
        The name or path.

    Raises:
        ValueError: when `layer` is not in `model`.

    Example:

    >>> import keras, keras_mtl
    >>> from keras_mtl.gradients.engine import layer_path
    >>> x = keras.Input((3,))
    >>> trunk = keras_mtl.layers.SharedBottom(units=(4,), name="trunk")
    >>> tower = keras_mtl.layers.SharedBottom(units=(2,), name="tower")
    >>> model = keras.Model(x, tower(trunk(x)))
    >>> layer_path(model, trunk), layer_path(model, trunk.dense_layers[0])
    ('trunk', 'trunk/dense_0')
    """
    same_name = _layers_named(model, layer.name)
    if len(same_name) == 1 and same_name[0] is layer:
        return layer.name

    def names_down_to(parent):
        for child in parent._flatten_layers(include_self=False, recursive=False):
            if child is layer:
                return [child.name]
            below = names_down_to(child)
            if below:
                return [child.name, *below]
        return None

    names = names_down_to(model)
    if names is None:
        raise ValueError(
            "Expected `layer` to be a layer of the model (nested layers included). Received: "
            f"layer={layer.name!r} (a {type(layer).__name__}), which is not a layer of the model"
        )
    return "/".join(names)


def _layers_named(model, name: str) -> list:
    """Every layer of `model` that `name` (a name or a path, see `find_layer`) names."""
    if "/" not in name:
        return [layer for layer in model._flatten_layers(include_self=False) if layer.name == name]
    # Keras forbids "/" in layer names, so the path is unambiguous to split.
    found = [model]
    for part in name.split("/"):
        found = [
            child
            for parent in found
            for child in parent._flatten_layers(include_self=False, recursive=False)
            if child.name == part
        ]
    return found


def _frozen_layers(model) -> list[str]:
    """Names of the outermost layers of `model` with variables and `trainable=False`."""
    found = []

    def visit(parent):
        for layer in parent._flatten_layers(include_self=False, recursive=False):
            if not layer.trainable and layer.weights:
                found.append(layer_path(model, layer))
            elif layer.trainable:
                visit(layer)

    visit(model)
    return found


def cpu_replica_devices(strategy) -> list[str]:
    """The devices of `strategy`'s replicas if every one is a CPU, else `[]`.

    XLA fails on several CPU replicas (a replica's variables read from
    another CPU device), so `MultiTaskModel.compile` refuses
    `jit_compile=True` there.

    Args:
        strategy: a `tf.distribute.Strategy`.

    Returns:
        The replicas' device strings, or `[]` when any is not a CPU.

    Example:

    >>> import tensorflow as tf
    >>> from keras_mtl.gradients.engine import cpu_replica_devices
    >>> cpu_replica_devices(tf.distribute.OneDeviceStrategy("/cpu:0"))
    ['/job:localhost/replica:0/task:0/device:CPU:0']
    """
    devices = list(getattr(strategy.extended, "worker_devices", ()))
    if devices and all(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in devices):
        return devices
    return []


def representation_layer(model, required: bool):
    """The model's single `SharedRepresentation` layer (or `None`).

    Args:
        model: a Keras model.
        required: whether a model without one is an error.

    Returns:
        The layer, or `None` when the model has none and `required` is false.

    Raises:
        ValueError: when the model has several, or none while `required`.

    Example:

    >>> import keras, keras_mtl
    >>> from keras_mtl.gradients.engine import representation_layer
    >>> x = keras.Input((3,))
    >>> z = keras_mtl.layers.SharedRepresentation(name="z")(keras.layers.Dense(2)(x))
    >>> representation_layer(keras.Model(x, z), required=True).name
    'z'
    >>> print(representation_layer(keras.Model(x, keras.layers.Dense(2)(x)), required=False))
    None
    """
    found = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, SharedRepresentation)
    ]
    if len(found) > 1:
        raise ValueError(
            "Representation gradients (gradient_mode='representation', or 'auto' for a "
            "balancer that prefers them) need exactly one SharedRepresentation layer. "
            f"Received: a model with {len(found)}: {[layer.name for layer in found]}"
        )
    if not found and required:
        raise ValueError(
            "gradient_mode='representation' needs a keras_mtl.layers.SharedRepresentation "
            "layer marking the tensor that the task towers share; the model has none."
        )
    return found[0] if found else None


class _Step(NamedTuple):
    """What the gradient modes need of one training step."""

    model: Any
    tape: tf.GradientTape
    task_targets: list  # per-task losses as differentiated (loss-scaled), in task order
    losses: tf.Tensor  # (T,) unscaled, all-reduced, gradients stopped
    model_vars: list  # trainable variables of the model, without the balancer's
    scale: tf.Tensor | None  # the loss scale, or None without loss scaling
    ctx: Any  # the replica context
    replicas: int
    rep: tf.Tensor | None  # the SharedRepresentation tensor in representation mode
    checks: list  # the step's assertions (graph mode), run before the balancer


def _aggregate(step, jacobian, **kwargs):
    # The Jacobian need not depend on `losses`: without the identity, a
    # balancer could write state from it before the checks fail.
    with tf.control_dependencies(step.checks):
        jacobian = tf.identity(jacobian)
    return step.model.balancer.aggregate(jacobian, step.losses, **kwargs)


def _rescale(value, scale, replicas: int = 1):
    """`value * scale / replicas`, with no op for a factor of 1."""
    if scale is not None:
        value = value * scale
    return value / replicas if replicas > 1 else value


def _unscale(value, scale):
    return value if scale is None else value / scale


def _all_reduce(ctx, value, replicas):
    if replicas == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _agree(ctx, flag, replicas):
    """`flag` of every replica, and-ed: the same boolean on all of them."""
    if replicas == 1:
        return flag
    failed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(flag, tf.float32))
    return tf.equal(failed, 0.0)


def _poison(grads, keep):
    """`grads` with a NaN added to one of them unless `keep`.

    Under a strategy with merge calls, the loss scale optimizer decides to
    skip from the first replica's gradients alone, but the task-specific
    ones are each replica's own share: an overflow that another replica
    alone sees would be summed into the update. And it misses an overflow
    in a sparse gradient's row whose index repeats (see `_apply`). Added to
    the smallest dense gradient with elements, where it costs least, or else
    to every value of a sparse one, which a test that keeps one row per
    index still sees.
    """
    if not grads:
        return grads

    def cost(g):
        sparse = isinstance(g, tf.IndexedSlices)
        size = (g.values if sparse else g).shape.num_elements()
        # A gradient without elements would carry nothing.
        return (sparse, size == 0, float("inf") if size is None else size)

    i = min(range(len(grads)), key=lambda k: cost(grads[k]))
    g = grads[i]
    values = g.values if isinstance(g, tf.IndexedSlices) else g
    nan = tf.where(keep, tf.constant(0.0, values.dtype), tf.constant(float("nan"), values.dtype))
    grads = list(grads)
    if isinstance(g, tf.IndexedSlices):
        grads[i] = tf.IndexedSlices(values + nan, g.indices, g.dense_shape)
    else:
        grads[i] = values + nan
    return grads


def _take_recorded(layer):
    """The tensor `layer` (a `SharedRepresentation`) recorded in this
    thread's forward pass; the layer keeps no reference to it (nor to its
    graph) afterwards.

    Raises:
        ValueError: when the layer did not run in the forward pass.
    """
    recorded = layer._recorded
    layer._recorded = None
    if recorded is None:
        raise ValueError(
            "gradient_mode='representation' needs the model's forward pass to apply its "
            f"SharedRepresentation layer, but the SharedRepresentation layer '{layer.name}' did "
            "not run in the training step's forward pass (a subclassed model's `call` must apply "
            "it, in the thread that runs the step)."
        )
    return recorded


def _gather_examples(ctx, jacobian, representation):
    """Representation-mode rows of the global batch, from every replica's own.

    Args:
        ctx: the replica context.
        jacobian: `(T, b * d)`, gradients with respect to this replica's `b`
            examples of the representation.
        representation: `(b, ...)`, this replica's representation.

    Returns:
        The `(T, B * d)` Jacobian and `(B, ...)` representation of the global
        batch (replicas in order; local batches may differ in size), and a
        function taking a `(B * d,)` direction to this replica's `(b * d,)`
        part.
    """
    local = tf.shape(representation)[0]
    features = tf.reduce_prod(tf.shape(representation)[1:])
    num_tasks = jacobian.shape[0]
    rows = tf.reshape(jacobian, [num_tasks, local, features])
    rows = ctx.all_gather(rows, axis=1)
    gathered, sizes = ctx.all_gather([representation, tf.reshape(local, [1])], axis=0)
    # Balancers read the feature shape statically (GradDrop).
    gathered.set_shape([None, *representation.shape[1:]])
    # As TensorFlow's own gradient of `all_gather` finds a replica's rows.
    start = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])

    def own_rows(direction):
        return tf.reshape(tf.reshape(direction, [-1, features])[start : start + local], [-1])

    return tf.reshape(rows, [num_tasks, -1]), gathered, own_rows


def _assertion(condition, message) -> list:
    """`[the assert op]` in a graph, `[]` eagerly (where it has already run)."""
    op = tf.debugging.Assert(condition, message)
    return [] if op is None else [op]


def _check_losses_and_rate(losses, task_names, optimizer, reg=None) -> list:
    # One assertion for all tasks: a per-task op costs more than the check.
    checks = _assertion(
        tf.reduce_all(tf.math.is_finite(losses)),
        [
            "Non-finite task loss; the step was not applied. Pass compile(nonfinite=`skip`) to "
            f"skip such steps instead. Losses of the tasks ({', '.join(task_names)}):",
            losses,
        ],
    )
    if reg is not None:
        # An infinite penalty can come with finite (zero) gradients, e.g.
        # DSelect-k's on a selector that sits on unused binary codes.
        checks += _assertion(
            tf.math.is_finite(reg),
            [
                "Non-finite regularization loss (the sum of `model.losses`: weight "
                "regularizers and add_loss terms of the layers); the step was not applied. "
                "Regularization loss:",
                reg,
            ],
        )
    # A NaN learning rate turns finite gradients into a NaN update.
    rate = _learning_rate(optimizer)
    return checks + _assertion(
        tf.math.is_finite(rate),
        ["Non-finite learning rate; the step was not applied. learning_rate:", rate],
    )


def _learning_rate(optimizer):
    return tf.cast(optimizer.learning_rate, tf.float32)


def _all_finite(tensors):
    # One sum per tensor, not an elementwise test: a sum is finite whenever
    # every element is, and the exact test runs only when a sum is not (a
    # non-finite element, or finite elements whose sum overflows).
    tensors = [t.values if isinstance(t, tf.IndexedSlices) else t for t in tensors]
    if not tensors:
        return tf.constant(True)
    sums = tf.stack([tf.reduce_sum(tf.cast(t, tf.float32)) for t in tensors])
    return tf.cond(
        tf.reduce_all(tf.math.is_finite(sums)),
        lambda: tf.constant(True),
        lambda: tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])),
    )


def _restore(state, keep) -> None:
    """Undoes what the balancer wrote into its `state` in this step unless `keep`."""
    for v, old in state:
        v.assign(tf.where(keep, v.value, old))


def _scale(grad, weight):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(
            grad.values * tf.cast(weight, grad.values.dtype), grad.indices, grad.dense_shape
        )
    return grad * tf.cast(weight, grad.dtype)


def _weighted_sum(per_task, weights):
    """`sum_t w_t g_t` per variable; `None` where no task reaches the variable."""
    out = []
    for i in range(len(per_task[0])):
        terms = [_scale(gs[i], weights[t]) for t, gs in enumerate(per_task) if gs[i] is not None]
        if not terms:
            out.append(None)
        elif len(terms) == 1:
            out.append(terms[0])
        else:
            out.append(tf.add_n([tf.convert_to_tensor(g) for g in terms]))
    return out


def _place(grads, indices, values):
    """Writes `values` into `grads` at `indices` and returns `grads`."""
    for i, g in zip(indices, values, strict=True):
        grads[i] = g
    return grads


def _add(grads, extra):
    out = []
    for g, e in zip(grads, extra, strict=True):
        if e is None:
            out.append(g)
        elif g is None:
            out.append(e)
        else:
            out.append(tf.convert_to_tensor(g) + tf.convert_to_tensor(e))
    return out
