"""The Balancer contract shared by every loss-weighting and gradient method."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

# Private in Keras 3: whether the code runs inside a TensorFlow graph.
from keras.src.utils.backend_utils import in_tf_graph

# Private in Keras 3: the snake-case class name Keras gives unnamed layers.
from keras.src.utils.naming import to_snake_case

# Re-exported: the balancer modules validate their arguments with these.
from keras_mtl._validation import (  # noqa: F401
    check_integer,
    check_number,
    check_positive_int,
    check_seed,
    is_number,
)

_SEED_PREFIX = "seed_generator_state_"


class BalanceResult(NamedTuple):
    """What a balancer returns for one step.

    Attributes:
        direction: `(num_params,)` descent direction handed to the optimizer, or
            `None` when the balancer was called without a Jacobian.
        weights: `(num_tasks,)` effective weight of each task's loss.

    Example:

    >>> import numpy as np, keras_mtl
    >>> result = keras_mtl.balancers.get("ew").aggregate(np.eye(2), np.ones(2))
    >>> direction, weights = result
    >>> np.asarray(weights).tolist()
    [1.0, 1.0]

    References:
        Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
        2024 (aggregating the Jacobian into one direction).
    """

    direction: Any
    weights: Any


# True inside a training step of MultiTaskModel, where the model's `nonfinite`
# option decides what non-finite inputs do and restores the state of a
# skipped step, also when the step runs eagerly (`run_eagerly=True`).
_IN_MODEL_STEP = contextvars.ContextVar("keras_mtl_in_model_step", default=False)


@contextlib.contextmanager
def model_step():
    """Marks the calls of `aggregate` made by a `MultiTaskModel` training step.

    An eager `aggregate` on a balancer with state refuses non-finite inputs,
    so that a standalone call cannot spoil the state. In the model's step the
    model's `nonfinite` option decides instead ("skip" restores the state),
    eager or not, so the check is left out there.

    Example:

    >>> import numpy as np, keras_mtl
    >>> from keras_mtl.balancers.base import model_step
    >>> b = keras_mtl.balancers.get("dwa")
    >>> b.aggregate(None, np.array([np.nan, 1.0]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected finite `losses`: `DWA` keeps state ...
    >>> with model_step():
    ...     weights = b.aggregate(None, np.array([np.nan, 1.0])).weights
    >>> tuple(weights.shape)
    (2,)
    """
    token = _IN_MODEL_STEP.set(True)
    try:
        yield
    finally:
        _IN_MODEL_STEP.reset(token)


@keras.saving.register_keras_serializable(package="keras_mtl")
class Balancer(keras.layers.Layer):
    """Base class of every balancing method.

    A balancer turns per-task losses (and, for gradient methods, the Jacobian
    of the task losses with respect to the shared parameters) into a descent
    direction and the effective task weights. It is a Keras layer only to
    reuse Keras's variable tracking, naming and serialisation: state lives in
    Keras variables created in `build(num_tasks)`, so it is saved and
    restored with the model.

    Subclasses implement `compute(jacobian, losses, representation)` and may
    override `auxiliary_loss(losses)` when they own trainable variables.

    Class attributes read by the gradient engine:
        requires_jacobian: whether `compute` needs per-task gradients. When
            `False` the engine takes one backward pass of the weighted loss.
        jacobian_scope: `"shared"` (Jacobian of all shared variables, the
            direction is applied to them) or `"last_shared_layer"` (Jacobian
            of the last shared layer only, used to compute weights; the update
            is then the gradient of the weighted loss, as in GradNorm).
        preferred_gradient_mode: `None`, or the gradient mode that
            `gradient_mode="auto"` should pick for this method (for example
            `"representation"` for MGDA-UB).
        supports_jit: whether `compute` can run under XLA.

    Args:
        name: name of the balancer (and prefix of its variables and log
            keys). By default the class name in snake case, the same for
            every instance (Keras would number the second one), so that log
            keys such as `nash_mtl_solver_failures` do not change with the
            number of models built in the process.
        **kwargs: other `keras.layers.Layer` arguments.

    Example:

    >>> import numpy as np
    >>> import keras_mtl
    >>> b = keras_mtl.balancers.get("ew")
    >>> jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    >>> result = b.aggregate(jacobian, np.array([1.0, 2.0]))
    >>> np.asarray(result.direction).tolist()
    [2.0, 2.0, 2.0]
    >>> np.asarray(result.weights).tolist()
    [1.0, 1.0]

    References:
        Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
        2024; Lin et al., "LibMTL: A Python Library for Multi-Task Learning",
        JMLR 2023 (the two families of methods, loss weighting and gradient
        manipulation, behind one interface).
    """

    requires_jacobian: bool = False
    jacobian_scope: str = "shared"
    preferred_gradient_mode: str | None = None
    supports_jit: bool = True

    def __init__(self, name: str | None = None, **kwargs):
        # Balancing is always done in float32, also under mixed precision.
        kwargs["dtype"] = "float32"
        super().__init__(name=name or to_snake_case(type(self).__name__), **kwargs)
        self.num_tasks: int | None = None
        self.task_names: list[str] | None = None

    def set_task_names(self, task_names: list[str]) -> None:
        """Receives the model's task names in task order (before `build`).

        `MultiTaskModel.compile` calls this; methods configured per task name
        (fixed weights, DTP's KPIs) resolve their configuration here.

        Args:
            task_names: the task names, in the order of the losses.
        """
        self.task_names = list(task_names)

    def observe(self, y_true: dict, y_pred: dict, masks: dict) -> None:
        """Sees each training batch before `aggregate` (default: nothing).

        Called by the model inside the training step, for methods whose
        weights depend on task metrics (DTP's KPIs). Update state variables
        here; do not branch in Python on tensor values.

        Args:
            y_true: `{task: labels}` with missing labels replaced by 0.
            y_pred: `{task: predictions}`.
            masks: `{task: (batch,) float mask}`, 1 where the label exists.
        """
        del y_true, y_pred, masks

    def prepare(self, num_params: int) -> None:
        """Learns the number of Jacobian columns before training (default: nothing).

        `MultiTaskModel.fit` calls this eagerly, under the model's distribution
        strategy, once the shared variables are known, so that methods whose
        state has one entry per parameter (DB-MTL) create it outside the
        traced training step.

        Args:
            num_params: number of shared parameters (columns of the Jacobian).
        """
        del num_params

    def on_epoch_begin(self, epoch: int) -> None:
        """Told by `MultiTaskModel.fit` that epoch `epoch` (0-based) begins.

        Runs eagerly between epochs; methods that work per epoch (DWA) record
        it in a state variable so that the boundary survives save and resume.

        Args:
            epoch: the 0-based epoch index, as Keras callbacks see it.
        """
        del epoch

    def on_epoch_end(self, epoch: int) -> None:
        """Told by `MultiTaskModel.fit` that epoch `epoch` (0-based) ended.

        Runs eagerly, before the user's callbacks (so a checkpoint written at
        the end of the epoch holds what this records). An epoch that began
        but never ended was interrupted; Keras restarts it from its first
        step on resume (`BackupAndRestore`).

        Args:
            epoch: the 0-based epoch index, as Keras callbacks see it.
        """
        del epoch

    def build(self, num_tasks: int) -> None:
        """Creates the state for `num_tasks` tasks.

        Subclasses that keep state override this, call `super().build` and
        create their variables with `add_state` (non-trainable) or
        `add_weight` (trainable, trained by the model's optimizer through
        `auxiliary_loss`).

        Args:
            num_tasks: number of tasks, a positive integer.

        Raises:
            ValueError: if `num_tasks` is not a positive integer.
        """
        self.num_tasks = check_positive_int("num_tasks", num_tasks)

    def add_state(self, name: str, shape, initializer="zeros", dtype: str = "float32"):
        """Adds a non-trainable state variable.

        Every replica computes the same balancer state from all-reduced inputs,
        so the variable takes the first replica's value under `tf.distribute`.

        Args:
            name: variable name.
            shape: variable shape.
            initializer: Keras initializer or its name.
            dtype: variable dtype.

        Returns:
            The new `keras.Variable`.
        """
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            dtype=dtype,
            trainable=False,
            aggregation="only_first_replica",
        )

    def aggregate(self, jacobian, losses, representation=None) -> BalanceResult:
        """Computes the descent direction and the effective task weights.

        Works eagerly without a model, and inside `tf.function`. Stateful
        balancers build their state on the first call and update it on each
        call.

        Args:
            jacobian: `(num_tasks, num_params)` per-task gradients of the
                (unscaled) task losses, or `None` for loss-only methods.
            losses: `(num_tasks,)` task losses.
            representation: optional value of the shared representation when
                `jacobian` holds gradients with respect to it (representation
                gradient mode); methods such as GradDrop read it.

        Called eagerly, a balancer with state (moving averages, learned
        weights, counters) refuses non-finite inputs before writing any state,
        so that one bad call does not leave NaN in its state for good. Inside
        a graph, or in the training step of `MultiTaskModel` (see
        `model_step`), there is no such check: the model's `nonfinite` option
        decides, and restores the state of a skipped step.

        Returns:
            A `BalanceResult(direction, weights)`; `direction` is `None` when
            `jacobian` is `None`.

        Raises:
            ValueError: if `losses` is not a vector, if the Jacobian is missing
                for a method that needs it, or if the shapes disagree; when
                called eagerly on a balancer with state, if `losses` or
                `jacobian` holds a NaN or an infinity.
        """
        losses = ops.convert_to_tensor(losses, dtype="float32")
        if len(losses.shape) != 1:
            raise ValueError(
                "Expected `losses` to be a vector of shape (num_tasks,). "
                f"Received: losses with shape {tuple(losses.shape)}"
            )
        num_tasks = losses.shape[0]
        if jacobian is None:
            if self.requires_jacobian:
                raise ValueError(
                    f"`{type(self).__name__}` is a gradient method and needs the "
                    "Jacobian of the task losses. Received: jacobian=None"
                )
        else:
            jacobian = ops.convert_to_tensor(jacobian, dtype="float32")
            if len(jacobian.shape) != 2 or jacobian.shape[0] != num_tasks:
                raise ValueError(
                    "Expected `jacobian` of shape (num_tasks, num_params) with "
                    f"num_tasks={num_tasks} rows (one per loss). Received: jacobian "
                    f"with shape {tuple(jacobian.shape)}"
                )
            if jacobian.shape[1] == 0:
                raise ValueError(
                    "Expected `jacobian` with at least one column (one per shared "
                    f"parameter). Received: jacobian with shape {tuple(jacobian.shape)}"
                )
        if not self.built:
            self.build(int(num_tasks))
        elif num_tasks != self.num_tasks:
            raise ValueError(
                f"This balancer was built for {self.num_tasks} tasks. Received: "
                f"losses with {num_tasks} entries"
            )
        if not (_IN_MODEL_STEP.get() or in_tf_graph()) and self._has_state():
            self._check_finite(losses=losses, jacobian=jacobian)
        return self.compute(jacobian, losses, representation)

    def _has_state(self) -> bool:
        """Whether `compute` may write state variables (its own or those of
        wrapped balancers); seed generators' states do not count (advancing
        them loses nothing)."""
        seeds = {
            id(generator.state)
            for layer in self._flatten_layers()
            for generator in layer._seed_generators
        }
        return any(id(v) not in seeds for v in self.non_trainable_variables)

    def _check_finite(self, **tensors) -> None:
        """Raises `ValueError` naming the first (eager) tensor with a NaN or
        an infinity; `None` values are skipped."""
        for argument, value in tensors.items():
            if value is None or bool(ops.all(ops.isfinite(value))):
                continue
            raise ValueError(
                f"Expected finite `{argument}`: `{type(self).__name__}` keeps state (moving "
                "averages, task weights) that a NaN or infinity would spoil for every later "
                "call, so nothing was computed and the state is unchanged. Received: "
                f"{argument} with non-finite values {_nonfinite_preview(value)}"
            )

    def compute(self, jacobian, losses, representation=None) -> BalanceResult:
        """The method itself; called by `aggregate` with validated inputs.

        Args:
            jacobian: `(num_tasks, num_params)` float32 tensor or `None`.
            losses: `(num_tasks,)` float32 tensor.
            representation: see `aggregate`.

        Returns:
            A `BalanceResult`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `compute`.")

    def auxiliary_loss(self, losses):
        """Loss that trains the balancer's own trainable variables.

        The engine passes the task losses with gradients stopped and adds the
        result to the objective, so only the balancer's variables receive its
        gradient (for example uncertainty weighting's log-variances).

        Args:
            losses: `(num_tasks,)` task losses (no gradient to the model).

        Returns:
            A scalar; `0.0` for balancers without trainable variables.
        """
        del losses
        return ops.convert_to_tensor(0.0, dtype="float32")

    def logs(self) -> dict:
        """Extra scalars to report in the training logs (for example solver
        failure counts). Keys are prefixed with the balancer name by nothing:
        choose unique names.

        Returns:
            A dict of scalar tensors.
        """
        return {}

    def save_own_variables(self, store) -> None:
        super().save_own_variables(store)
        # Keras saves a layer's variables but not its seed generators' state;
        # without it a resumed run would replay the random draws from the start.
        for i, generator in enumerate(self._seed_generators):
            store[f"{_SEED_PREFIX}{i}"] = np.asarray(generator.state.value)

    def load_own_variables(self, store) -> None:
        keys = list(store.keys())
        own = self._trainable_variables + self._non_trainable_variables
        saved = [tuple(store[k].shape) for k in keys if not k.startswith(_SEED_PREFIX)]
        expected = [tuple(v.shape) for v in own]
        if saved != expected:
            # Like Keras's optimizer state, the balancer's belongs to `compile`:
            # weights saved with another balancer (or task count) still load.
            warnings.warn(
                f"Skipped the saved state of the balancer '{self.name}' "
                f"({type(self).__name__}): the file holds variables of shapes {saved}, the "
                f"balancer has {expected}. It was probably saved with "
                "another balancer; this one keeps its initial state.",
                stacklevel=2,
            )
            return
        for i, generator in enumerate(self._seed_generators):
            if f"{_SEED_PREFIX}{i}" in keys:
                generator.state.assign(np.asarray(store[f"{_SEED_PREFIX}{i}"]))
        super().load_own_variables({k: store[k] for k in keys if not k.startswith(_SEED_PREFIX)})

    def get_config(self) -> dict:
        config = super().get_config()
        # Balancers always compute in float32; the dtype is not a user option.
        config.pop("dtype", None)
        config.pop("trainable", None)
        return config

    def __call__(self, *args, **kwargs):
        # Not Layer.__call__: it would first build the balancer from the
        # arguments' shapes and fail on `num_tasks=None` before `call` could
        # say what to do instead.
        raise NotImplementedError(_call_message(self, args, kwargs))

    def call(self, *args, **kwargs):
        raise NotImplementedError(_call_message(self, args, kwargs))


def _call_message(balancer, args, kwargs) -> str:
    name = type(balancer).__name__
    return (
        f"A balancer is not called like a layer: call `{name}.aggregate(jacobian, losses)`. "
        f"Received: a call of `{name}` with {len(args)} positional and {len(kwargs)} keyword "
        "arguments"
    )


def _nonfinite_preview(value, limit: int = 5) -> str:
    """`at (i, j): v, ...` for the first `limit` non-finite entries."""
    array = np.asarray(ops.convert_to_numpy(value))
    where = np.argwhere(~np.isfinite(array))
    shown = ", ".join(
        f"{tuple(int(i) for i in index)}: {array[tuple(index)]}" for index in where[:limit]
    )
    more = f" and {len(where) - limit} more" if len(where) > limit else ""
    return f"at {shown}{more}"


def weighted_direction(weights, jacobian):
    """`weights^T jacobian`, or `None` without a Jacobian.

    Args:
        weights: `(num_tasks,)` tensor.
        jacobian: `(num_tasks, num_params)` tensor or `None`.

    Returns:
        `(num_params,)` tensor or `None`.

    Example:

    >>> import numpy as np
    >>> from keras_mtl.balancers.base import weighted_direction
    >>> jac = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]], "float32")
    >>> np.asarray(weighted_direction(np.array([0.5, 2.0]), jac)).tolist()
    [0.5, 6.0, 3.0]
    >>> weighted_direction(np.ones(2), None) is None
    True
    """
    if jacobian is None:
        return None
    # einsum, not a (1, T) x (T, P) matmul: 15-25 % faster on CPU, same values.
    return ops.einsum("t,tp->p", ops.cast(weights, jacobian.dtype), jacobian)


_ALIASES: dict[str, type] = {}


def register_balancer(*aliases: str):
    """Class decorator: registers a balancer for `get` under lowercase aliases
    and for Keras serialisation under the `keras_mtl` package.

    Args:
        *aliases: lowercase names accepted by `keras_mtl.balancers.get`.

    Returns:
        The decorator.

    Example:

    >>> import keras, keras_mtl
    >>> @keras_mtl.balancers.register_balancer("half_weights_example")
    ... class HalfWeights(keras_mtl.balancers.Balancer):
    ...     def compute(self, jacobian, losses, representation=None):
    ...         weights = 0.5 * keras.ops.ones_like(losses)
    ...         return keras_mtl.balancers.BalanceResult(None, weights)
    >>> keras_mtl.balancers.get("half_weights_example").aggregate(None, [1.0, 2.0]).weights.numpy().tolist()
    [0.5, 0.5]
    """

    def decorator(cls):
        # Every alias is checked before any is registered: a refused
        # registration leaves no alias behind.
        for alias in aliases:
            if alias in _ALIASES and _ALIASES[alias] is not cls:
                raise ValueError(
                    f"Received an invalid value for `aliases` of `{cls.__name__}`, expected "
                    f"names no other balancer uses: {alias!r} is already taken by "
                    f"`{_ALIASES[alias].__name__}`. Received: aliases={aliases!r}"
                )
        cls = keras.saving.register_keras_serializable(package="keras_mtl")(cls)
        for alias in aliases:
            _ALIASES[alias] = cls
        return cls

    return decorator


def available() -> list[str]:
    """Returns the sorted list of balancer aliases accepted by `get`.

    Example:

    >>> import keras_mtl
    >>> "ew" in keras_mtl.balancers.available()
    True
    """
    return sorted(_ALIASES)


def get(identifier) -> Balancer:
    """Returns a balancer from a name, a config dict or an instance.

    Args:
        identifier: a lowercase alias such as `"ew"` or `"db_mtl"`, a dict
            produced by `serialize`, a `Balancer` instance (returned as is), or
            `None` (equal weighting).

    Returns:
        A `Balancer`.

    Raises:
        ValueError: for an unknown name or an unsupported identifier; the
            message lists the valid names.

    Example:

    >>> import keras_mtl
    >>> keras_mtl.balancers.get("fixed").__class__.__name__
    'StaticWeighting'
    """
    if identifier is None:
        identifier = "ew"
    if isinstance(identifier, Balancer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _ALIASES:
            raise ValueError(
                "Received an unknown value for `balancer`, expected one of "
                f"{available()} or a keras_mtl.balancers.Balancer. "
                f"Received: balancer={identifier!r}"
            )
        return _ALIASES[key]()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(
        "Received an invalid value for `balancer`, expected a name from "
        f"{available()}, a config dict or a keras_mtl.balancers.Balancer. "
        f"Received: balancer={identifier!r} of type {type(identifier).__name__}"
    )


def serialize(balancer: Balancer) -> dict:
    """Serialises a balancer to a JSON-compatible dict (Keras format).

    Args:
        balancer: the balancer.

    Returns:
        A dict accepted by `deserialize` and `get`.

    Example:

    >>> import keras_mtl
    >>> config = keras_mtl.balancers.serialize(keras_mtl.balancers.StaticWeighting([2.0, 1.0]))
    >>> config["class_name"], config["config"]["weights"]
    ('StaticWeighting', [2.0, 1.0])
    """
    return keras.saving.serialize_keras_object(balancer)


def deserialize(config: dict) -> Balancer:
    """Recreates a balancer from `serialize`'s output.

    A dict of the short form `{"class_name": "pcgrad", "config": {...}}` with
    an alias as class name is accepted as well.

    Args:
        config: the dict.

    Returns:
        A `Balancer`; built when the config records a build (full Keras
        configs), otherwise unbuilt until its first use.

    Raises:
        ValueError: if the dict does not describe a balancer.

    Example:

    >>> import keras_mtl
    >>> b = keras_mtl.balancers.deserialize({"class_name": "fixed", "config": {"weights": [1.0, 3.0]}})
    >>> type(b).__name__, b.weights_config
    ('StaticWeighting', [1.0, 3.0])
    """
    class_name = config.get("class_name") if isinstance(config, dict) else None
    try:
        if isinstance(class_name, str) and class_name.lower() in _ALIASES:
            obj = _ALIASES[class_name.lower()].from_config(config.get("config", {}))
        else:
            obj = keras.saving.deserialize_keras_object(config)
    except TypeError as error:
        # Keras reports an unknown class, and wraps a constructor's ValueError, so.
        raise ValueError(
            "Expected a config dict describing a keras_mtl balancer, with a class name among "
            f"{available()} or a registered Balancer class. Received: config={config!r}. "
            f"Keras said: {error}"
        ) from error
    if not isinstance(obj, Balancer):
        raise ValueError(
            "Expected a config dict describing a keras_mtl balancer. Received: "
            f"config={config!r}, which describes a `{type(obj).__name__}`, not a Balancer"
        )
    return obj
