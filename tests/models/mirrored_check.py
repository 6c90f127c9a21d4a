"""Run in a fresh process by test_distribution.py: two logical CPU devices must be
configured before TensorFlow initialises, which pytest's process has already done."""

import json
import sys

import keras
import numpy as np
import tensorflow as tf

from tests.models.helpers import NormalizedEMA, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}


def run(strategy, x, y, weight):
    with strategy.scope():
        # "reg": L2 penalties, whose gradient each replica must also divide.
        reg = keras.regularizers.L2(0.05) if sys.argv[3:] == ["reg"] else None
        model = build(regularizer=reg)
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=LOSS,
            balancer=NormalizedEMA(0.3) if sys.argv[2] == "ema" else sys.argv[2],
            gradient_mode=sys.argv[1],
            metrics={"task_1": ["mae"], "task_2": ["mae"]},
        )
        # After compile: a balancer's own trainable variables (IMTL's) join the model's.
        initial = [np.array(v) for v in model.trainable_variables]
    history = model.fit(
        x, y, sample_weight=weight, batch_size=32, epochs=1, shuffle=False, verbose=0
    ).history
    final = [np.array(v) for v in model.trainable_variables]
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(final, initial, strict=True))
    logs = {k: float(v[-1]) for k, v in history.items()}
    return final, [np.array(v) for v in model.balancer.variables], moved, logs


def refusals(x, y):
    """The messages of the modes refused with several replicas, in order."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    messages = []
    for kwargs in ({"gradient_mode": "representation"}, {"nonfinite": "skip"}):
        with strategy.scope():
            model = build(representation=True)
            model.compile(optimizer="sgd", loss=LOSS, balancer="mgda", **kwargs)
        before = [np.array(v) for v in model.trainable_variables]
        try:
            model.fit(x, y, batch_size=32, epochs=1, verbose=0)
            messages.append(None)
        except ValueError as error:
            messages.append(str(error))
        after = [np.array(v) for v in model.trainable_variables]
        # A refused step applies nothing.
        assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    return messages


def auto_mode(x, y):
    """The mode that gradient_mode="auto" takes with several replicas for a balancer that
    prefers representation gradients, and whether fit runs with it."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build(representation=True)
        model.compile(optimizer="sgd", loss=LOSS, balancer="mgda_ub")
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    return [model._engine.resolve_mode(model), bool(np.isfinite(history["loss"][0]))]


def steps_per_execution_refusal(x, y):
    """compile's message for steps_per_execution=2 with two replicas, and whether plain Keras
    fails there too (the reason for the refusal: keras-team/keras#19246)."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
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


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    x, y = data(n=64)
    if sys.argv[1] == "refusals":
        report = {
            "messages": refusals(x, y),
            "auto_mode": auto_mode(x, y),
            "steps_per_execution": steps_per_execution_refusal(x, y),
        }
        print(json.dumps(report))
        return
    # Unlabelled examples, unevenly spread over the replicas' halves of each batch.
    weight = {"task_1": np.ones(64, "float32"), "task_2": np.ones(64, "float32")}
    weight["task_2"][[0, 1, 2, 3, 4, 40]] = 0.0
    devices = ["/cpu:0", "/cpu:1"]
    single = run(tf.distribute.OneDeviceStrategy("/cpu:0"), x, y, weight)
    single_vars, single_state, moved, single_logs = single
    mirror_vars, mirror_state, _, mirror_logs = run(
        tf.distribute.MirroredStrategy(devices), x, y, weight
    )
    report = {
        "log_keys": [sorted(single_logs), sorted(mirror_logs)],
        # The epoch's logs, compiled metrics and balancer logs included.
        "max_log_diff": max(abs(single_logs[k] - mirror_logs.get(k, np.inf)) for k in single_logs),
        "max_var_diff": max(
            float(np.max(np.abs(a - b))) for a, b in zip(single_vars, mirror_vars, strict=True)
        ),
        "moved": moved,
        # Every balancer variable (e.g. DB-MTL's step, moving norms and moving
        # gradients), not only the first.
        "balancer_vars": [len(single_state), len(mirror_state)],
        "balancer_diff": max(
            float(np.max(np.abs(a - b))) for a, b in zip(single_state, mirror_state, strict=True)
        ),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
