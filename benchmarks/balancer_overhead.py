"""Time of each gradient balancer's `aggregate`, relative to equal weighting.

Runs `balancer.aggregate(J, L)` inside `tf.function` on a random Jacobian of
an MLP trunk's size (P = 500*512 + 2*512*512 parameters) for T = 2, 10, 40
tasks, and prints a table of the median time per call, its ratio to the
"ew" aggregate (one `w^T J` product) and to a bare `J^T w` matmul. The
Jacobian itself is not computed here; this measures only what happens after
it. Default run: under two minutes on two CPU cores.

Usage:
    python benchmarks/balancer_overhead.py [--tasks 2 10 40] [--repeats 5]
        [--methods pcgrad mgda ...] [--jit]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_mtl import balancers  # noqa: E402

NUM_PARAMS = 500 * 512 + 2 * 512 * 512
METHODS = [
    "ew",
    "pcgrad",
    "graddrop",
    "gradvac",
    "mgda",
    "cagrad",
    "imtl",
    "nash_mtl",
    "aligned_mtl",
    "upgrad",
    "dualproj",
    "db_mtl",
]


def median_time(fn, repeats: int) -> float:
    fn()  # trace / compile
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        np.asarray(out)  # wait for the result
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_method(name: str, jac, losses, repeats: int, jit: bool) -> float:
    balancer = balancers.get(name)
    balancer.build(int(jac.shape[0]))

    @tf.function(jit_compile=jit)
    def step(j, loss):
        return balancer.aggregate(j, loss).direction

    return median_time(lambda: step(jac, losses), repeats)


def time_matmul(jac, repeats: int, jit: bool) -> float:
    weights = tf.ones((jac.shape[0],))

    @tf.function(jit_compile=jit)
    def step(j, w):
        return tf.linalg.matvec(j, w, transpose_a=True)

    return median_time(lambda: step(jac, weights), repeats)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--params", type=int, default=NUM_PARAMS)
    parser.add_argument("--jit", action="store_true", help="compile with XLA")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    print(f"P = {args.params}, median of {args.repeats} calls, jit={args.jit}")
    print(f"{'method':<12} {'T':>3} {'ms':>9} {'x ew':>7} {'x matmul':>9}")
    for num_tasks in args.tasks:
        shared = rng.standard_normal((1, args.params), dtype=np.float32)
        jac = tf.constant(
            rng.standard_normal((num_tasks, args.params), dtype=np.float32) + 0.3 * shared
        )
        losses = tf.constant(rng.uniform(0.5, 2.0, size=num_tasks).astype(np.float32))
        matmul = time_matmul(jac, args.repeats, args.jit)
        ew = time_method("ew", jac, losses, args.repeats, args.jit)
        for name in args.methods:
            seconds = ew if name == "ew" else time_method(name, jac, losses, args.repeats, args.jit)
            row = {
                "method": name,
                "tasks": num_tasks,
                "ms": 1e3 * seconds,
                "vs_ew": seconds / ew,
                "vs_matmul": seconds / matmul,
            }
            rows.append(row)
            print(
                f"{name:<12} {num_tasks:>3} {row['ms']:>9.2f} {row['vs_ew']:>7.2f} "
                f"{row['vs_matmul']:>9.2f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
