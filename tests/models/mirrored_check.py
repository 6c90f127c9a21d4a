"""Run in a fresh process by test_distribution.py: two logical CPU devices must be
configured before TensorFlow initialises, which pytest's process has already done.

`python -m tests.models.mirrored_check KIND BALANCER [OPTION]` prints one JSON report
(`cases "KIND BALANCER [OPTION]" ...`: a dict of them):

- KIND `loop` / `jacobian`: the update of one epoch under two replicas against one device on
  the global batch (OPTION `reg`: L2 penalties; `overflow`: mixed precision and a label whose
  float16 gradient overflows on one replica; `embedding`: the same in a model whose only
  gradient is an embedding's, sparse, with the overflowing rows' ids looked up again).
- KIND `skip`: the same with `nonfinite="skip"` and one non-finite batch (OPTION `mixed`:
  mixed precision with a loss scale optimizer; `representation`: in representation mode;
  `gate`: finite losses, but a NaN task-specific gradient on one replica alone).
- KIND `representation`: the same with `gradient_mode="representation"` (OPTION `uneven`:
  local batches of different sizes; `empty`: a local batch without examples; `syncbn`:
  synchronized batch normalisation in the towers; `sequence`: a representation of rank 3,
  (batch, time, features), with local batches of different sizes).
- KIND `auto`: the mode `gradient_mode="auto"` takes with several replicas, the refusal of
  `steps_per_execution` > 1, and the logs of `train_on_batch`.
"""

import json
import sys
import traceback

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import keras_mtl
from keras_mtl.balancers import Balancer, BalanceResult
from tests.models.helpers import NormalizedEMA, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}
DEVICES = ["/cpu:0", "/cpu:1"]


class Sanitized(Balancer):
    """Equal weights; the direction drops the Jacobian's non-finite columns, so an overflow
    in the shared rows does not reach the shared update."""

    requires_jacobian = True

    def compute(self, jacobian, losses, representation=None):
        direction = ops.sum(jacobian, axis=0)
        direction = ops.where(ops.isfinite(direction), direction, 0.0)
        return BalanceResult(direction, ops.ones((self.num_tasks,)))


def mirrored():
    """A two-replica MirroredStrategy whose collective keys no earlier one in the process
    used: TensorFlow's runtime keeps each collective instance's shape by key, and every new
    strategy starts from the same keys (TensorFlow's own tests bump the base likewise)."""
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    return tf.distribute.MirroredStrategy(DEVICES)


BALANCERS = {"ema": lambda: NormalizedEMA(0.3), "sanitized": Sanitized}


def run(strategy, x, y, weight, kind, balancer, option):
    mixed = option in ("mixed", "overflow", "embedding")
    skip_mode = "representation" if option == "representation" else "loop"
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with strategy.scope():
            # "reg": L2 penalties, whose gradient each replica must also divide.
            reg = keras.regularizers.L2(0.05) if option == "reg" else None
            if option == "syncbn":
                model = build_with_synchronized_towers()
            elif option == "sequence":
                model = build_sequence_model()
            elif option == "embedding":
                model = embedding_model()
            elif option == "gate":
                model = gated_model()
            else:
                model = build(
                    regularizer=reg,
                    representation=kind == "representation" or option == "representation",
                )
            # Adam for the skipped steps: its step count and moments show an update
            # that should not have been made.
            optimizer = keras.optimizers.Adam(0.05) if kind == "skip" else keras.optimizers.SGD(0.5)
            if mixed:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=256.0)
            model.compile(
                optimizer=optimizer,
                loss=LOSS,
                balancer=BALANCERS.get(balancer, lambda: balancer)(),
                gradient_mode=skip_mode if kind == "skip" else kind,
                nonfinite="skip" if kind == "skip" else "raise",
                metrics={"task_1": ["mae"], "task_2": ["mae"]},
            )
            # After compile: a balancer's own trainable variables (IMTL's) join the model's.
            initial = [_numpy(v) for v in model.trainable_variables]
    finally:
        keras.config.set_dtype_policy("float32")
    history = model.fit(
        x, y, sample_weight=weight, batch_size=32, epochs=1, shuffle=False, verbose=0
    ).history
    final = [_numpy(v) for v in model.trainable_variables]
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(final, initial, strict=True))
    logs = {k: float(v[-1]) for k, v in history.items()}
    optimizer_state = [_numpy(v).astype("float64") for v in model.optimizer.variables]
    return {
        "vars": final,
        "balancer": [_numpy(v) for v in model.balancer.variables],
        "optimizer": optimizer_state,
        "iterations": int(_numpy(model.optimizer.iterations)),
        "skipped": float(_numpy(model._skipped_steps)),
        "scale": float(_numpy(optimizer.dynamic_scale)) if mixed else None,
        "moved": moved,
        "logs": logs,
    }


def build_with_synchronized_towers():
    """`build(representation=True)` with synchronized batch normalisation in each tower: its
    all-reduce lets the other replica's forward pass run between a replica's call of the
    SharedRepresentation layer and the engine's read of the tensor it recorded."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
    h = keras_mtl.layers.SharedRepresentation(name="rep")(h)
    outputs = {}
    for name in LOSS:
        t = keras.layers.Dense(4, activation="tanh", name=f"{name}_hidden")(h)
        t = keras.layers.BatchNormalization(synchronized=True, name=f"{name}_norm")(t)
        outputs[name] = keras.layers.Dense(1, name=name)(t)
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


def build_sequence_model():
    """`build(representation=True)` on sequences: the trunk and the representation are
    (batch, 3, 8); each tower pools over time."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3, 2))
    h = keras.layers.Dense(8, activation="tanh", name="trunk")(inputs)
    h = keras_mtl.layers.SharedRepresentation(name="rep")(h)
    outputs = {}
    for name in LOSS:
        t = keras.layers.Dense(4, activation="tanh", name=f"{name}_hidden")(h)
        outputs[name] = keras.layers.Dense(1, name=name)(keras.layers.GlobalAveragePooling1D()(t))
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


class SqrtGate(keras.layers.Layer):
    """`h * sqrt(g * s)`, `s` the first input feature: finite, but the gradient of `g` is
    NaN on an example with `s = 0`."""

    def build(self, input_shape):
        self.g = self.add_weight(shape=(), initializer="ones", name="g")

    def call(self, h, s):
        return h * ops.sqrt(self.g * s)


def gated_model():
    """`build()` with a `SqrtGate` in task_1's tower: a task-specific gradient, which each
    replica holds its own share of, can be NaN on one replica while every loss is finite."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
    gated = SqrtGate(name="gate")(h, inputs[:, :1])
    outputs = {
        "task_1": keras.layers.Dense(1, name="task_1")(gated),
        "task_2": keras.layers.Dense(1, name="task_2")(h),
    }
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


def embedding_model():
    """Two tasks read columns of one embedding directly (as in matrix factorisation): the
    only gradient is an `IndexedSlices`, with one row per lookup."""
    keras.utils.set_random_seed(1)
    ids = keras.Input((3,), dtype="int32")
    table = keras.layers.Embedding(10, 2, name="table")(ids)
    column = {"task_1": slice(0, 1), "task_2": slice(1, 2)}
    outputs = {
        name: keras.layers.Lambda(
            lambda t, c=column[name]: keras.ops.mean(t[..., c], axis=1), name=name
        )(table)
        for name in LOSS
    }
    return keras_mtl.MultiTaskModel(inputs=ids, outputs=outputs)


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def compare(single, mirror):
    def max_diff(a, b):
        return max(
            (float(np.max(np.abs(u - v), initial=0.0)) for u, v in zip(a, b, strict=True)),
            default=0.0,
        )

    single_logs, mirror_logs = single["logs"], mirror["logs"]
    return {
        "log_keys": [sorted(single_logs), sorted(mirror_logs)],
        # The epoch's logs, compiled metrics and balancer logs included.
        "max_log_diff": max(abs(single_logs[k] - mirror_logs.get(k, np.inf)) for k in single_logs),
        "logs": [single_logs, mirror_logs],
        "max_var_diff": max_diff(single["vars"], mirror["vars"]),
        "moved": single["moved"],
        # Every balancer variable (e.g. DB-MTL's step, moving norms and moving
        # gradients), not only the first.
        "balancer_vars": [len(single["balancer"]), len(mirror["balancer"])],
        "balancer_diff": max_diff(single["balancer"], mirror["balancer"]),
        "balancer_finite": bool(all(np.all(np.isfinite(v)) for v in mirror["balancer"])),
        "optimizer_vars": [len(single["optimizer"]), len(mirror["optimizer"])],
        "optimizer_diff": max_diff(single["optimizer"], mirror["optimizer"]),
        "iterations": [single["iterations"], mirror["iterations"]],
        "skipped": [single["skipped"], mirror["skipped"]],
        "scale": [single["scale"], mirror["scale"]],
    }


def auto_mode(x, y):
    """The mode that gradient_mode="auto" takes with several replicas for a balancer that
    prefers representation gradients, and whether fit runs with it."""
    strategy = mirrored()
    with strategy.scope():
        model = build(representation=True)
        model.compile(optimizer="sgd", loss=LOSS, balancer="mgda_ub")
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    return [model._engine.resolve_mode(model), bool(np.isfinite(history["loss"][0]))]


def train_on_batch_logs(x, y):
    """The keys of `train_on_batch`'s dict and the length of its list, on one device and
    with two replicas, for a balancer with logs and `nonfinite="skip"`."""
    found = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), mirrored()):
        with strategy.scope():
            model = build()
            model.compile(optimizer="sgd", loss=LOSS, balancer="nash_mtl", nonfinite="skip")
        logs = model.train_on_batch(x[:32], {k: v[:32] for k, v in y.items()}, return_dict=True)
        flat = model.train_on_batch(x[:32], {k: v[:32] for k, v in y.items()})
        found.append([sorted(logs), len(flat)])
    return found


def steps_per_execution_refusal(x, y):
    """compile's message for steps_per_execution=2 with two replicas, and whether plain Keras
    fails there too (the reason for the refusal: keras-team/keras#19246)."""
    strategy = mirrored()
    with strategy.scope():
        model = build()
        try:
            model.compile(optimizer="sgd", loss=LOSS, steps_per_execution=2)
            message = None
        except ValueError as error:
            message = str(error)
        plain = keras.Model(model.inputs, model.outputs)
        plain.compile(optimizer="sgd", loss=LOSS, steps_per_execution=2)
    try:
        plain.fit(x, y, batch_size=32, epochs=1, verbose=0)
        plain_fails = False
    except tf.errors.InvalidArgumentError:
        plain_fails = True
    return {"message": message, "plain_fails": plain_fails}


def check(kind, balancer, option):
    """The report comparing one device with two replicas for one case."""
    # "uneven": a last batch of 5 split 3 / 2, "empty": of 1 split 1 / 0 (Keras builds the
    # model on the first batch, which must split evenly).
    x, y = data(
        n={"uneven": 69, "empty": 65, "sequence": 69}.get(option, 96 if kind == "skip" else 64)
    )
    # Unlabelled examples, unevenly spread over the replicas' halves of each batch.
    n = len(x)
    weight = {"task_1": np.ones(n, "float32"), "task_2": np.ones(n, "float32")}
    weight["task_2"][[0, 1, 2, 3, 4, 40]] = 0.0
    if option == "sequence":
        x = x.reshape(len(x), 3, 2)
    if option in ("overflow", "embedding"):
        # A label whose float16 gradient overflows at the loss scale, in the second replica's
        # half of the first batch: only that replica's gradients of the task_1 tower overflow.
        y = {k: v.copy() for k, v in y.items()}
        y["task_1"][20] = 3e4
    if option == "embedding":
        # Ids from 0 to 9; the overflowing example's ids are looked up again later in the
        # batch, where Keras's loss scale optimizer keeps only the last row of an index.
        x = (np.arange(n * 3).reshape(n, 3) % 10).astype("int32")
        x[20:24] = [1, 2, 3]
    if option == "gate":
        # The gate's input is positive but 0 on one example in the second replica's half of
        # the second batch: only that replica's gradient of the gate is NaN.
        x = x.copy()
        x[:, 0] = np.abs(x[:, 0]) + 0.5
        x[52, 0] = 0.0
    elif kind == "skip":
        # An infinite label (NaN would mean "missing") in the second replica's half of the
        # second of three batches: only that replica sees a non-finite loss and gradient.
        y = {k: v.copy() for k, v in y.items()}
        y["task_1"][52] = np.inf
    single = run(tf.distribute.OneDeviceStrategy("/cpu:0"), x, y, weight, kind, balancer, option)
    mirror = run(mirrored(), x, y, weight, kind, balancer, option)
    return compare(single, mirror)


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    if sys.argv[1] == "cases":
        # Several cases in one process (TensorFlow's start-up is a good part of a case's
        # time), each "KIND BALANCER [OPTION]"; a failing case reports its traceback.
        reports = {}
        for case in sys.argv[2:]:
            try:
                reports[case] = check(*(case.split() + [None])[:3])
            except Exception:  # reported to the test of that case
                reports[case] = {"error": traceback.format_exc()[-3000:]}
        print(json.dumps(reports))
        return
    if sys.argv[1] == "auto":
        x, y = data(n=64)
        report = {
            "auto_mode": auto_mode(x, y),
            "steps_per_execution": steps_per_execution_refusal(x, y),
            "train_on_batch": train_on_batch_logs(x, y),
        }
        print(json.dumps(report))
        return
    print(json.dumps(check(*(sys.argv[1:] + [None])[:3])))


if __name__ == "__main__":
    main()
