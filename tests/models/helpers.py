"""Small models, data and test balancers shared by the model and engine tests."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import keras_mtl
from keras_mtl.balancers import Balancer, BalanceResult

TASKS = ("task_1", "task_2")


def data(n=64, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = {
        "task_1": (x[:, :1] * 2.0 + 0.1 * rng.normal(size=(n, 1))).astype("float32"),
        "task_2": (x[:, 1:2] - x[:, 2:3] + 0.1 * rng.normal(size=(n, 1))).astype("float32"),
    }
    return x, y


def run_in_a_fresh_process(script: str) -> None:
    """Runs the Python `script` in a new interpreter (nothing imported or registered yet)."""
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )


def json_report(*args: str) -> dict:
    """Runs `python *args` in a new process from the repository root (for TensorFlow settings
    such as logical devices, which must come before it starts) and returns the JSON object
    its last output line holds."""
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def traced_train_step(model, x, y):
    """The graph of `model.train_step` traced on the batch `(x, y)` (a dict of labels)."""
    batch = (tf.constant(x), {k: tf.constant(v) for k, v in y.items()})
    return tf.function(model.train_step).get_concrete_function(batch).graph


def brute_force_grads(model, x, y, weights):
    """Gradients of `sum_t w_t L_t` (MSE; tasks of weight 0 left out, so their labels may be
    missing) plus the layers' regularisation losses, over `model.trainable_variables`; zeros
    where unreached."""
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = sum(
            w * tf.reduce_mean(tf.square(pred[t] - y[t]))
            for w, t in zip(weights, TASKS, strict=True)
            if w
        )
        loss += sum(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    return [
        np.zeros(v.shape) if g is None else np.asarray(g)
        for g, v in zip(grads, model.trainable_variables, strict=True)
    ]


def build(d=6, seed=1, representation=False, model_cls=None, regularizer=None):
    """A two-task shared-bottom MLP; `model_cls=keras.Model` for plain Keras.

    `regularizer` goes on the trunk's and the hidden tower layers' kernels.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((d,))
    h = keras_mtl.layers.SharedBottom(units=(8,), kernel_regularizer=regularizer, name="trunk")(
        inputs
    )
    if representation:
        h = keras_mtl.layers.SharedRepresentation(name="rep")(h)
    outputs = {
        name: keras.layers.Dense(1, name=name)(
            keras.layers.Dense(
                4, activation="tanh", kernel_regularizer=regularizer, name=f"{name}_hidden"
            )(h)
        )
        for name in TASKS
    }
    return (model_cls or keras_mtl.MultiTaskModel)(inputs=inputs, outputs=outputs)


class Capture(Balancer):
    """Fixed weights `[0.3, 0.7]`, direction `w^T J`; stores J and losses (and the
    representation the engine passes, or None) when eager."""

    requires_jacobian = True
    last = None
    last_representation = None

    def compute(self, jacobian, losses, representation=None):
        if not hasattr(jacobian, "graph"):
            Capture.last = (np.asarray(jacobian), np.asarray(losses))
            Capture.last_representation = (
                None if representation is None else np.asarray(representation)
            )
        weights = ops.convert_to_tensor([0.3, 0.7], dtype="float32")
        return BalanceResult(ops.matmul(weights[None], jacobian)[0], weights)


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
class NormalizedEMA(Balancer):
    """A stateful, non-linear test balancer: each task gradient is scaled to unit
    norm, then averaged with an exponential moving average kept in state."""

    requires_jacobian = True

    def __init__(self, beta=0.5, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def build(self, num_tasks):
        super().build(num_tasks)
        self.ema = self.add_state("ema", (num_tasks,), initializer="ones")

    def compute(self, jacobian, losses, representation=None):
        norms = ops.sqrt(ops.sum(jacobian * jacobian, axis=1)) + 1e-12
        new = self.beta * self.ema + (1.0 - self.beta) / norms
        self.ema.assign(new)
        return BalanceResult(ops.matmul(new[None], jacobian)[0], new)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}
