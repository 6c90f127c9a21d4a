"""T per-task backward passes through a dense trunk: one at a time, vectorised, or batched by hand.

Usage:
    python benchmarks/trunk_backward.py                 # T = 10, the trunk of step_time.py
    python benchmarks/trunk_backward.py --tasks 2,5,10
    python benchmarks/trunk_backward.py --quick         # a smoke run in seconds

The "loop" gradient mode spends most of its step in the trunk's T backward passes (one per task's
gradient of the trunk output). This script times that part alone (with the trunk's forward pass),
in one process, interleaved rounds, on the trunk of benchmarks/step_time.py (500 -> 3 x 512 ReLU,
batch 256):

    loop            T `tape.gradient(h, trunk, output_gradients=c_t)` calls, as the loop mode makes
    vectorized      one `tf.vectorized_map` over the T cotangents (pfor), as the jacobian mode makes
    batched         the same gradients written by hand: the T tasks' cotangents stacked into one
                    (T * batch, width) matrix per layer, so each layer's input gradient is one large
                    matmul and its kernel gradients one matmul for all tasks
    stacked matmul  a single (T * batch, width) x (width, width) matmul, as a yardstick: the rate
                    of the largest matmul in the batched backward pass

Each row prints its time (10th percentile and median), its ratio to "loop", and its multiply-add
rate; after each T, a line gives the time the loop's multiply-adds would take at the stacked
matmul's rate. When "loop" already runs near that rate, no rearrangement of the same arithmetic can
make the per-task backward passes much cheaper.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


class Trunk:
    """A ReLU MLP of `tf.Variable`s with the three ways of taking T per-task backward passes.

    Args:
        num_tasks: T, the number of cotangents of the trunk output.
        batch: rows of the input.
        width: units of each layer.
        input_dim: input features.
        depth: number of dense layers.
        seed: seed of the input, the weights and the cotangents.
    """

    def __init__(self, num_tasks, batch, width, input_dim, depth=3, seed=0):
        rng = np.random.default_rng(seed)
        self.num_tasks, self.batch, self.width = num_tasks, batch, width
        self.x = tf.constant(rng.normal(size=(batch, input_dim)).astype("float32"))
        fan_in = [input_dim] + [width] * (depth - 1)
        self.kernels = [
            tf.Variable((rng.normal(size=(k, width)) / np.sqrt(k)).astype("float32"))
            for k in fan_in
        ]
        self.biases = [tf.Variable(np.zeros(width, "float32")) for _ in fan_in]
        self.variables = [v for pair in zip(self.kernels, self.biases, strict=True) for v in pair]
        self.cotangents = tf.constant(rng.normal(size=(num_tasks, batch, width)).astype("float32"))
        self.loop = tf.function(self._loop)
        self.vectorized = tf.function(self._vectorized)
        self.batched = tf.function(self._batched)
        self.stacked_matmul = tf.function(self._stacked_matmul)

    def multiply_adds(self) -> int:
        """Multiply-adds of what each way runs: one forward pass, and T backward passes of
        kernel gradients and input gradients (but the first layer's: its input is data)."""
        kernels = sum(int(np.prod(k.shape)) for k in self.kernels)
        inputs = kernels - int(np.prod(self.kernels[0].shape))
        return self.batch * (kernels + self.num_tasks * (kernels + inputs))

    def _forward(self):
        h, acts = self.x, [self.x]
        for kernel, bias in zip(self.kernels, self.biases, strict=True):
            h = tf.nn.relu(tf.matmul(h, kernel) + bias)
            acts.append(h)
        return h, acts

    def _loop(self):
        with tf.GradientTape(persistent=True) as tape:
            h, _ = self._forward()
        return [
            tape.gradient(h, self.variables, output_gradients=self.cotangents[t])
            for t in range(self.num_tasks)
        ]

    def _vectorized(self):
        with tf.GradientTape(persistent=True) as tape:
            h, _ = self._forward()
        return tf.vectorized_map(
            lambda c: tape.gradient(h, self.variables, output_gradients=c), self.cotangents
        )

    def _stacked_matmul(self):
        """One (T * batch, width) x (width, width) matmul: the yardstick rate."""
        rows = tf.reshape(self.cotangents, (-1, self.width))
        return tf.matmul(rows, self.kernels[-1])

    def _batched(self):
        """Per variable, the `(T, *shape)` gradients; kernels as `(T, units, fan_in)`.

        Kernel gradients come out transposed: `c^T a` for all tasks is one matmul with the
        layout (T, units, fan_in); `a^T c` would need a transpose of the result per layer.
        """
        num_tasks, batch = self.num_tasks, self.batch
        _, acts = self._forward()
        d = self.cotangents * tf.cast(acts[-1] > 0, tf.float32)  # (T, batch, units)
        grads = []
        for layer in reversed(range(len(self.kernels))):
            a = acts[layer]
            units = d.shape[-1]
            by_task = tf.reshape(tf.transpose(d, (0, 2, 1)), (num_tasks * units, batch))
            kernel = tf.reshape(tf.matmul(by_task, a), (num_tasks, units, a.shape[-1]))
            grads = [kernel, tf.reduce_sum(d, 1)] + grads
            if layer:
                rows = tf.reshape(d, (num_tasks * batch, units))
                d = tf.matmul(rows, self.kernels[layer], transpose_b=True)
                d = tf.reshape(d, (num_tasks, batch, -1)) * tf.cast(a > 0, tf.float32)
        return grads


def _max_difference(trunk: Trunk) -> float:
    """Largest absolute difference of the batched and vectorised gradients from the loop's."""
    loop = [tf.stack(g) for g in zip(*trunk.loop(), strict=True)]
    batched = trunk.batched()
    batched = [tf.transpose(g, (0, 2, 1)) if g.shape.rank == 3 else g for g in batched]
    worst = 0.0
    for other in (trunk.vectorized(), batched):
        for a, b in zip(loop, other, strict=True):
            worst = max(worst, float(tf.reduce_max(tf.abs(a - b))))
    return worst


def measure(args) -> list[dict]:
    results = []
    for num_tasks in args.tasks:
        trunk = Trunk(num_tasks, args.batch, args.width, args.input_dim)
        difference = _max_difference(trunk)
        runs = {
            "loop": trunk.loop,
            "vectorized": trunk.vectorized,
            "batched": trunk.batched,
            "stacked matmul": trunk.stacked_matmul,
        }
        macs = {name: trunk.multiply_adds() for name in runs}
        macs["stacked matmul"] = num_tasks * args.batch * args.width * args.width
        times = {name: [] for name in runs}
        for fn in runs.values():
            fn()  # traced outside the timings
        names = list(runs)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                tf.nest.flatten(runs[name]())[-1].numpy()
                times[name].append(time.perf_counter() - start)
        quiet = {n: float(np.percentile(times[n], args.percentile)) for n in names}
        for name in names:
            row = {
                "T": num_tasks,
                "config": name,
                "ms": 1000 * quiet[name],
                "median_ms": 1000 * statistics.median(times[name]),
                # The yardstick does other arithmetic: a ratio of times would mean nothing.
                "vs_loop": None if name == "stacked matmul" else quiet[name] / quiet["loop"],
                "gmacs": macs[name] / quiet[name] / 1e9,
            }
            results.append(row)
            print(
                f"T={num_tasks:<3} {name:<14} {row['ms']:8.2f} ms {_ratio(row['vs_loop']):>6} loop   "
                f"median {row['median_ms']:8.2f} ms   {row['gmacs']:7.1f} GMAC/s",
                flush=True,
            )
        at_stacked = macs["loop"] / (macs["stacked matmul"] / quiet["stacked matmul"])
        print(
            f"T={num_tasks:<3} the loop's multiply-adds at the stacked matmul's rate: "
            f"{1000 * at_stacked:.2f} ms, {at_stacked / quiet['loop']:.2f}x the loop; largest "
            f"difference from the loop's gradients: {difference:.2e}",
            flush=True,
        )
    return results


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(results: list[dict], percentile: float) -> str:
    lines = [
        f"| T | config | ms (p{percentile:g}) | vs loop | median ms | multiply-adds per s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['T']} | {r['config']} | {r['ms']:.2f} | {_ratio(r['vs_loop'])} "
            f"| {r['median_ms']:.2f} | {r['gmacs']:.1f} G |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="10", help="comma-separated task counts")
    parser.add_argument("--repeats", type=int, default=40, help="interleaved repetitions")
    parser.add_argument(
        "--percentile",
        type=float,
        default=10.0,
        help="percentile of the times compared (noise only ever adds time)",
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--input-dim", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    args.tasks = [int(t) for t in args.tasks.split(",") if t]
    if args.quick:
        args.tasks, args.repeats, args.batch, args.width, args.input_dim = [2], 2, 8, 16, 12
    results = measure(args)
    print()
    print(table(results, args.percentile))
    return results


if __name__ == "__main__":
    main()
