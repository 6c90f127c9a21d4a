"""Speed of the stacked-kernel ExpertBank and of MMoE, measured in one process.

Usage:
    python benchmarks/expert_bank_speed.py            # the issue's settings
    python benchmarks/expert_bank_speed.py --quick    # a smoke run in seconds

A. Forward + backward (compiled `tf.function`, gradient of sum(out^2) with respect to the input
   and the weights) of `ExpertBank(num_experts=8, units=(u,))` against one `Dense(8 u)`: the same
   FLOPs. Also a two-layer bank `units=(u, u // 2)` against two Dense layers (8 u, 4 u), which
   has 8x more FLOPs in the second layer than the bank; it is printed for information.
B. A training step (`fit`, batch 1024, two tasks, MSE) of `MMoE(num_experts=8)` against the same
   model written with 8 separate `Dense` experts kept in a Python list and stacked.

Each configuration is timed in repeated, interleaved rounds; the table shows medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_mtl.layers import ExpertBank, Gate, MMoE  # noqa: E402
from keras_mtl.layers.expert_bank import mix_experts  # noqa: E402


def _grad_step(layers):
    variables = [v.value for layer in layers for v in layer.trainable_weights]

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = x
            for layer in layers:
                h = layer(h)
            loss = tf.reduce_sum(tf.square(h))
        return tape.gradient(loss, [x, *variables])

    return step


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    # Make sure the work finished before stopping the clock.
    keras.tree.map_structure(lambda t: np.asarray(t), out)
    return (time.perf_counter() - start) / repeats


def _interleaved(fns: dict, rounds: int, repeats: int) -> dict:
    for fn in fns.values():
        fn()  # trace and warm up
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_time(fn, repeats))
    return {name: statistics.median(v) for name, v in samples.items()}


def bench_bank(batch: int, dim: int, units: int, rounds: int, repeats: int) -> dict:
    x = tf.constant(np.random.default_rng(0).normal(size=(batch, dim)).astype("float32"))
    bank1 = ExpertBank(8, units=(units,))
    dense1 = keras.layers.Dense(8 * units, activation="relu")
    bank2 = ExpertBank(8, units=(units, units // 2))
    dense2 = [
        keras.layers.Dense(8 * units, activation="relu"),
        keras.layers.Dense(4 * units, activation="relu"),
    ]
    for layer in (bank1, dense1, bank2, *dense2):
        if not layer.built:
            layer.build((batch, dim) if layer is not dense2[1] else (batch, 8 * units))
    steps = {
        "bank_1_layer": _grad_step([bank1]),
        "dense_1_layer": _grad_step([dense1]),
        "bank_2_layers": _grad_step([bank2]),
        "dense_2_layers": _grad_step(dense2),
    }
    return _interleaved({k: (lambda s=s: s(x)) for k, s in steps.items()}, rounds, repeats)


def _list_mmoe(inputs, num_experts: int, units: int):
    experts = [
        keras.layers.Dense(units, activation="relu", name=f"expert_{e}")(inputs)
        for e in range(num_experts)
    ]
    stacked = ops.stack(experts, axis=-2)
    return [mix_experts(Gate(num_experts, name=f"gate_{t}")(inputs), stacked) for t in range(2)]


def _model(kind: str, dim: int, units: int):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((dim,))
    if kind == "mmoe":
        h = MMoE(num_tasks=2, num_experts=8, expert_units=(units,))(inputs)
    else:
        h = _list_mmoe(inputs, 8, units)
    outputs = [keras.layers.Dense(1, name=f"t{t}")(h[t]) for t in range(2)]
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=["mse", "mse"])
    return model


def bench_mmoe(batch: int, dim: int, units: int, steps: int, rounds: int) -> dict:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch * steps, dim)).astype("float32")
    y = [x[:, :1], x[:, 1:2] - x[:, 2:3]]
    models = {kind: _model(kind, dim, units) for kind in ("mmoe", "dense_list")}

    def run(model):
        def fn():
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            return ()

        return fn

    per_epoch = _interleaved({k: run(m) for k, m in models.items()}, rounds, 1)
    return {k: v / steps for k, v in per_epoch.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        bank = bench_bank(batch=256, dim=64, units=16, rounds=3, repeats=5)
        mmoe = bench_mmoe(batch=1024, dim=32, units=16, steps=4, rounds=3)
    else:
        bank = bench_bank(batch=1024, dim=256, units=64, rounds=9, repeats=20)
        mmoe = bench_mmoe(batch=1024, dim=256, units=64, steps=40, rounds=11)
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, CPU threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}"
    )
    print("\nA. forward+backward, median ms per step")
    for name, seconds in bank.items():
        print(f"  {name:<16} {seconds * 1e3:8.3f}")
    print(
        f"  ratio bank/dense, 1 layer (same FLOPs, target <= 1.2): "
        f"{bank['bank_1_layer'] / bank['dense_1_layer']:.3f}"
    )
    print(
        f"  ratio bank/dense, 2 layers (dense has 8x the FLOPs in layer 2): "
        f"{bank['bank_2_layers'] / bank['dense_2_layers']:.3f}"
    )
    print("\nB. fit step at batch 1024, 2 tasks, median ms per step")
    for name, seconds in mmoe.items():
        print(f"  {name:<16} {seconds * 1e3:8.3f}")
    print(
        f"  ratio MMoE/list of Dense experts (target <= 1.0): "
        f"{mmoe['mmoe'] / mmoe['dense_list']:.3f}"
    )


if __name__ == "__main__":
    main()
