"""Gate utilisation of MMoE / CGC / PLE layers, logged each epoch."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable

import keras
import numpy as np

from keras_mtl._validation import check_positive_int, invalid_value
from keras_mtl.layers.cgc import CGC
from keras_mtl.layers.mmoe import MMoE
from keras_mtl.layers.ple import PLE

GATED_LAYERS = (MMoE, CGC, PLE)


def find_gated_layers(model) -> list:
    """The outermost MMoE, CGC and PLE layers of `model` (PLE's own CGC
    levels are not listed separately).

    Args:
        model: a Keras model or layer.

    Returns:
        The layers, in the model's layer order.

    Example:

    >>> import keras, keras_mtl
    >>> from keras_mtl.callbacks.gate_monitor import find_gated_layers
    >>> x = keras.Input((4,))
    >>> h = keras_mtl.layers.MMoE(num_tasks=2, num_experts=2, expert_units=(4,), name="mmoe")(x)
    >>> p = keras_mtl.layers.PLE(num_tasks=2, num_levels=2, expert_units=(4,), name="ple")(h[0])
    >>> [layer.name for layer in find_gated_layers(keras.Model(x, [h[1], *p]))]
    ['mmoe', 'ple']
    """
    found = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, GATED_LAYERS)
    ]
    inner = {
        id(sub)
        for layer in found
        for sub in layer._flatten_layers(include_self=False, recursive=True)
    }
    return [layer for layer in found if id(layer) not in inner]


class GateMonitor(keras.callbacks.Callback):
    """Reports how each task's gate uses the experts, every epoch.

    At the end of each epoch the monitor runs the model on
    `validation_data` (eagerly, in batches, `training=False`) while the gated
    layers (`MMoE`, `CGC`, `PLE`) record their task gate weights, and
    computes per task:

    - the mean weight of each expert over examples (and positions, for
      sequence or image inputs; padded positions, those a Keras padding mask
      marks False, are left out), logged as `<prefix>/<task>/expert_<i>`;
    - the gate entropy `-sum_i p_i log p_i` of the weights `p = w / sum(w)`,
      averaged over examples, logged as `<prefix>/<task>/entropy` (0 for a
      gate that always picks one expert, `log E` for uniform weights). The
      weights of a softmax gate sum to 1; DSelect-k's may sum to less while
      its selectors put mass on codes beyond the last expert.

    The scalars go into the epoch `logs`, so `History` and a `TensorBoard`
    callback placed after this one record them. With several gated layers
    the keys are `<prefix>/<layer name>/<task>/...`. Expert indices follow
    the gate's order: MMoE's experts; for CGC (and PLE's top level) the
    task's own experts first, then the shared experts.

    Recording instead of a sub-model on the gate outputs: the gate weights
    are internal to the layer, not nodes of the functional graph, and a
    recorded eager call works the same for functional, subclassed and nested
    models. The recorder is read in Python during the eager call only,
    so compiled training and inference functions are unaffected.

    Each monitored layer must run once per call of the model: a layer
    called on several inputs has one set of gate weights per call, so use
    one layer per call site.

    Args:
        validation_data: the inputs `x` (array, list or dict of arrays with
            the same number of examples), a tuple `(x, y)` or
            `(x, y, sample_weight)` as given to `fit`, or a `tf.data.Dataset`
            yielding `x` or such tuples. It is read every epoch, so a
            generator or iterator is not accepted.
        batch_size: batch size for array inputs.
        task_names: list of distinct names of the gated layers' tasks in
            their output order (default `task_0`, `task_1`, ...).
        layers: `None` for every gated layer found in the model, or a layer
            name, a layer, or a list of layers or layer names.
        prefix: first component of the log keys, a non-empty string.

    Raises:
        ValueError: at construction, for an invalid argument; from the start
            of training, when the model has no gated layer, an entry of
            `layers` matches none of them, `task_names` does not match a
            layer's number of tasks, or a monitored layer runs more than once
            per call of a functional or `Sequential` model; when computing
            the statistics, also when a monitored layer of a subclassed model
            runs more than once per call of the model, or every position of
            `validation_data` is padding.

    Example:

    >>> import keras, numpy as np, keras_mtl
    >>> x = keras.Input((4,))
    >>> h = keras_mtl.layers.MMoE(num_tasks=2, num_experts=3, expert_units=(4,))(x)
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs=x, outputs={"a": keras.layers.Dense(1, name="a")(h[0]),
    ...                        "b": keras.layers.Dense(1, name="b")(h[1])})
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> data = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    >>> monitor = keras_mtl.callbacks.GateMonitor(data, task_names=["a", "b"])
    >>> history = model.fit(data, {"a": data[:, :1], "b": data[:, 1:2]}, epochs=2,
    ...                     callbacks=[monitor], verbose=0)
    >>> monitor.get_history()["a"]["weights"].shape
    (2, 3)
    >>> "gate/b/entropy" in history.history
    True

    References:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018 (Sec. 5, gate analysis).
    """

    def __init__(
        self,
        validation_data,
        batch_size: int = 1024,
        task_names=None,
        layers=None,
        prefix: str = "gate",
    ):
        super().__init__()
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.validation_data = _check_validation_data(validation_data)
        self.task_names = _check_task_names(task_names)
        self.layer_selection = _check_layer_selection(layers)
        if not isinstance(prefix, str) or not prefix:
            raise invalid_value("prefix", prefix, "a non-empty string")
        self.prefix = prefix
        self.epochs: list[int] = []
        self._weights: dict[str, list] = {}
        self._entropy: dict[str, list] = {}

    # ------------------------------------------------------------ data
    def _batches(self):
        data = self.validation_data
        if hasattr(data, "as_numpy_iterator"):
            for element in data:
                yield element[0] if isinstance(element, tuple) else element
            return
        if isinstance(data, tuple) and len(data) in (2, 3):
            data = data[0]
        sizes = [len(a) for a in keras.tree.flatten(data)]
        for start in range(0, sizes[0], self.batch_size):
            stop = start + self.batch_size
            yield keras.tree.map_structure(lambda a, s=start, e=stop: a[s:e], data)

    def _layers(self) -> list:
        found = find_gated_layers(self.model)
        if not found:
            raise ValueError(
                "GateMonitor found no MMoE, CGC or PLE layer in the model. Received: "
                f"layers={self.layer_selection!r}"
            )
        if self.layer_selection is None:
            return found
        names = [layer.name for layer in found]
        unmatched = [
            x
            for x in self.layer_selection
            if (x not in names if isinstance(x, str) else all(x is not layer for layer in found))
        ]
        if unmatched:
            raise ValueError(
                "Received an invalid value for `layers`, expected MMoE, CGC or PLE layers of the "
                f"model or their names, among {names}. Received: layers={self.layer_selection!r}, "
                f"of which {unmatched!r} match none"
            )
        return [
            layer
            for layer in found
            if any(x is layer or x == layer.name for x in self.layer_selection)
        ]

    def _keys(self, layer, num_tasks: int, single: bool) -> list[str]:
        names = self.task_names or [f"task_{t}" for t in range(num_tasks)]
        if len(names) != num_tasks:
            raise ValueError(
                f"Received an invalid value for `task_names`, expected {num_tasks} names for "
                f"layer '{layer.name}'. Received: task_names={self.task_names!r}"
            )
        return names if single else [f"{layer.name}/{name}" for name in names]

    # ------------------------------------------------------------ stats
    def compute(self) -> dict[str, dict[str, np.ndarray]]:
        """Gate statistics on the validation data for the current weights.

        Returns:
            `{task_key: {"weights": (E,) mean expert weights, "entropy":
            scalar mean gate entropy}}`, `task_key` being the task name (or
            `<layer>/<task>` with several gated layers).
        """
        layers = self._layers()
        collected = {id(layer): [] for layer in layers}
        calls = {id(layer): [] for layer in layers}
        try:
            for layer in layers:
                layer._gate_recorder = calls[id(layer)].append
            for batch in self._batches():
                for recorded in calls.values():
                    recorded.clear()
                self.model(batch, training=False)
                for layer in layers:
                    recorded = calls[id(layer)]
                    # Each call of a shared layer has its own gate weights; reporting
                    # one of them would misattribute it to every task head.
                    if len(recorded) != 1:
                        raise _runs_error(layer, len(recorded))
                    weights, masks = recorded[0]
                    collected[id(layer)].append(
                        [_unpadded(w, mask) for w, mask in zip(weights, masks, strict=True)]
                    )
        finally:
            for layer in layers:
                layer._gate_recorder = None
        stats = {}
        for layer in layers:
            per_batch = collected[id(layer)]
            num_tasks = len(per_batch[0])
            keys = self._keys(layer, num_tasks, single=len(layers) == 1)
            for t, key in enumerate(keys):
                w = np.concatenate([b[t] for b in per_batch])
                if not len(w):
                    raise ValueError(
                        f"GateMonitor found no unpadded position in `validation_data` for "
                        f"layer '{layer.name}': every position is masked."
                    )
                # DSelect-k's weights may sum to less than 1 (mass on unreachable
                # codes); the entropy is that of the renormalised weights.
                total = w.sum(-1, keepdims=True)
                p = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
                entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), -1)
                stats[key] = {"weights": w.mean(axis=0), "entropy": float(entropy.mean())}
        return stats

    def on_train_begin(self, logs=None):
        # Fails on a bad `layers` selection, `task_names` of the wrong length
        # or a layer run several times per call before training rather than
        # after the first epoch. The runs are read from the graph of
        # functional and Sequential models; in a subclassed model they are
        # only seen by `compute`.
        layers = self._layers()
        for layer in layers:
            self._keys(layer, layer.num_tasks, single=len(layers) == 1)
            runs = runs_per_call(self.model, layer)
            if runs is not None and runs > 1:
                raise _runs_error(layer, runs)

    def on_epoch_end(self, epoch, logs=None):
        stats = self.compute()
        self.epochs.append(int(epoch))
        for key, value in stats.items():
            self._weights.setdefault(key, []).append(value["weights"])
            self._entropy.setdefault(key, []).append(value["entropy"])
            if logs is not None:
                for i, w in enumerate(value["weights"]):
                    logs[f"{self.prefix}/{key}/expert_{i}"] = float(w)
                logs[f"{self.prefix}/{key}/entropy"] = value["entropy"]

    def get_history(self) -> dict[str, dict[str, np.ndarray]]:
        """The statistics of every epoch seen so far.

        Returns:
            `{task_key: {"weights": (num_epochs, E), "entropy": (num_epochs,)}}`;
            the epoch indices are in `self.epochs`.
        """
        return {
            key: {
                "weights": np.stack(self._weights[key]),
                "entropy": np.asarray(self._entropy[key]),
            }
            for key in self._weights
        }


def runs_per_call(model, layer) -> int | None:
    """How many times `layer` runs in one call of `model`, read from its graph.

    A functional model runs each node of its graph once per call, and a
    `Sequential` model each of its layers; nested models count as many times
    as they run.

    Args:
        model: a Keras model or layer.
        layer: a layer of `model`.

    Returns:
        The number of runs, or `None` when only a call can tell: `layer` is
        inside a subclassed model or layer, whose `call` may run it any
        number of times.

    Example:

    >>> import keras, keras_mtl
    >>> from keras_mtl.callbacks.gate_monitor import runs_per_call
    >>> u, v = keras.Input((4,)), keras.Input((4,))
    >>> mmoe = keras_mtl.layers.MMoE(num_tasks=2, num_experts=2, expert_units=(4,))
    >>> runs_per_call(keras.Model([u, v], [*mmoe(u), *mmoe(v)]), mmoe)
    2
    >>> runs_per_call(keras.Sequential([keras.Input((4,)), mmoe]), mmoe)
    1
    """
    if model is layer:
        return 1
    if not isinstance(model, keras.layers.Layer) or all(
        sub is not layer for sub in model._flatten_layers(include_self=False, recursive=True)
    ):
        return 0
    if isinstance(model, keras.Sequential):
        parts = model.layers
    elif isinstance(getattr(model, "_nodes_by_depth", None), dict):  # functional
        parts = [node.operation for nodes in model._nodes_by_depth.values() for node in nodes]
    else:
        return None
    total = 0
    for part in parts:
        runs = runs_per_call(part, layer)
        if runs is None:
            return None
        total += runs
    return total


def _runs_error(layer, runs: int) -> ValueError:
    # Each call of a shared layer has its own gate weights; reporting one of
    # them would misattribute it to every task head.
    return ValueError(
        f"GateMonitor reports one call of each gated layer, but layer '{layer.name}' ran {runs} "
        "times in one call of the model. Use one layer per call site, or leave this layer out "
        "with `layers`."
    )


def _unpadded(weights, mask) -> np.ndarray:
    """Gate weights `(batch, ..., E)` as rows `(n, E)`, padded positions dropped."""
    w = np.asarray(weights, dtype="float64")
    rows = w.reshape(-1, w.shape[-1])
    if mask is None:
        return rows
    keep = np.broadcast_to(np.asarray(mask, dtype=bool), w.shape[:-1]).reshape(-1)
    return rows[keep]


def _check_validation_data(data):
    """`data`, once known to be arrays or a dataset that can be read every epoch."""
    if hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        return data
    x = data[0] if isinstance(data, tuple) and len(data) in (2, 3) else data
    leaves = keras.tree.flatten(x)
    if not leaves or any(len(getattr(a, "shape", ())) == 0 for a in leaves):
        raise ValueError(
            "Received an invalid value for `validation_data`, expected an array, a list or dict "
            "of arrays, a tuple (x, y) or (x, y, sample_weight) of them, or a tf.data.Dataset "
            "(it is read every epoch, so not a generator or iterator). "
            f"Received: validation_data={reprlib.repr(data)}"
        )
    sizes = sorted({int(a.shape[0]) for a in leaves})
    if len(sizes) != 1 or sizes[0] == 0:
        raise ValueError(
            "Received an invalid value for `validation_data`, expected arrays with the same "
            f"positive number of examples. Received: arrays of {sizes} examples"
        )
    return data


def _check_task_names(task_names) -> list[str] | None:
    """`task_names` as a list of distinct strings, or `None`."""
    if task_names is None:
        return None
    # A string is iterable too; it would be read letter by letter.
    names = (
        list(task_names)
        if isinstance(task_names, Iterable) and not isinstance(task_names, str | bytes)
        else None
    )
    if (
        not names
        or not all(isinstance(name, str) for name in names)
        or len(set(names)) != len(names)
    ):
        raise invalid_value("task_names", task_names, "None or a list of distinct strings")
    return names


def _check_layer_selection(layers) -> list | None:
    """`layers` as a list of layer names and layers, or `None`."""
    if layers is None:
        return None
    if isinstance(layers, str | keras.layers.Layer):
        return [layers]
    selection = list(layers) if isinstance(layers, Iterable) else []
    if not selection or not all(isinstance(x, str | keras.layers.Layer) for x in selection):
        raise invalid_value(
            "layers", layers, "None, a layer name, a layer, or a non-empty list of layers or names"
        )
    return selection
