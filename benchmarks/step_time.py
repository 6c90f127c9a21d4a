"""Training-step time of MultiTaskModel against plain Keras `fit`, in one process.

Usage:
    python benchmarks/step_time.py                      # ew and the gradient modes, T = 2, 5, 10
    python benchmarks/step_time.py --tasks 2,10,40 --balancers pcgrad,mgda,db_mtl
    python benchmarks/step_time.py --quick               # a smoke run in seconds

Model: MLP trunk 500 -> 3 x 512 (ReLU), one tower per task (128 ReLU -> 1), batch 256, MSE losses.
Every configuration trains whole epochs with `fit`, repeated and interleaved with the others (the
order rotates each round) so that machine noise hits all alike, and a callback records the wall time
of every step. The table compares, against plain `keras.Model.fit` with summed losses at the same T,
a low percentile of the step times (10th by default: on a shared machine noise only ever adds time,
so the fast steps show the cost of the computation, as `timeit` advises) and the median step.

Rows:
    plain                Keras functional model, losses summed by Keras
    bare_loop            plain Keras with a hand-written train_step: T tape.gradient calls, summed,
                         no Jacobian, no balancer, no masking: the floor under any per-task mode
    bare_jacobian        bare_loop, but the trunk's per-task gradients become the (T, P) matrix the
                         Balancer contract asks for, and its column sums w^T J the trunk's update:
                         the floor under the "loop" mode
    bare_vectorized      the same per-task gradients, with the T trunk backward passes vectorised
                         (tf.vectorized_map over the gradients of the trunk output): larger matmuls
    ew                   MultiTaskModel with balancer="ew" (one backward pass)
    loop / jacobian /    MultiTaskModel with a linear balancer that needs the Jacobian (weights 1,
    representation       direction w^T J), so the row measures the gradient mode itself
    <balancer>           MultiTaskModel with that balancer in gradient_mode="auto"
    <b>@representation   the same in gradient_mode="representation" (--rep-balancers)
    plain matmuls /      the MatMul ops of the traced plain and bare_loop steps and nothing else,
    bare_loop matmuls    on random inputs of the same shapes (not training steps): what the
                         matmuls alone cost, timed in the same rounds as the steps

After each T, a line adds plain fit's time outside its matmuls to bare_loop's matmuls: the cost of
a per-task loop that would spend no more than plain fit on everything else.

Ratios of a balancer's row to the "loop" row show what the balancing itself adds to the cost of the
Jacobian (both take T backward passes); ratios to "ew" are the cost of the method.
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

import keras_mtl  # noqa: E402
from keras_mtl.balancers import Balancer, BalanceResult  # noqa: E402
from keras_mtl.balancers.base import weighted_direction  # noqa: E402
from keras_mtl.demo import StepTimer  # noqa: E402
from keras_mtl.gradients.flatten import jacobian_rows, unflatten  # noqa: E402


class LinearJacobian(Balancer):
    """Equal weights computed from the Jacobian: isolates the cost of the gradient mode."""

    requires_jacobian = True

    def compute(self, jacobian, losses, representation=None):
        weights = ops.ones_like(losses)
        return BalanceResult(weighted_direction(weights, jacobian), weights)


def _summed(per_task):
    """Per variable, the sum of the tasks' gradients that reach it."""
    return [tf.add_n([g for g in gs if g is not None]) for gs in zip(*per_task, strict=True)]


class _BareStep(keras.Model):
    """A hand-written train_step: forward pass, T MSE losses, `gradients`, plain update."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape(persistent=True) as tape:
            pred = dict(self(x, training=True))
            rep = pred.pop("rep", None)
            losses = [ops.mean(ops.square(pred[k] - y[k])) for k in sorted(pred)]
        grads, variables = self.gradients(tape, losses, rep)
        self.optimizer.apply(grads, variables)
        self._loss_tracker.update_state(tf.add_n(losses))
        return {"loss": self._loss_tracker.result()}

    def split(self):
        """`(trunk variables, tower variables)`."""
        trunk = [v for v in self.trainable_variables if v.path.startswith("trunk_")]
        towers = [v for v in self.trainable_variables if not v.path.startswith("trunk_")]
        return trunk, towers


class BareLoop(_BareStep):
    """T `tape.gradient` calls and their sum: the bare cost of per-task gradients."""

    def gradients(self, tape, losses, rep):
        variables = self.trainable_variables
        return _summed([tape.gradient(loss, variables) for loss in losses]), variables


class BareJacobian(_BareStep):
    """`BareLoop` with the trunk's gradients as a Jacobian matrix: the floor under `"loop"`."""

    def gradients(self, tape, losses, rep):
        trunk, towers = self.split()
        per_task = [tape.gradient(loss, trunk + towers) for loss in losses]
        jacobian = jacobian_rows([g[: len(trunk)] for g in per_task], trunk)
        direction = weighted_direction(tf.ones((len(losses),)), jacobian)
        grads = unflatten(direction, trunk) + _summed([g[len(trunk) :] for g in per_task])
        return grads, trunk + towers


class BareVectorized(_BareStep):
    """Per-task gradients of the trunk output, then one vectorised trunk backward pass for all.

    `tf.vectorized_map` over the T output gradients of `tape.gradient(trunk output, trunk
    variables)`: the same multiply-adds as `bare_loop`, in matmuls T times larger. The model has
    the trunk output as an extra output `"rep"`.
    """

    def gradients(self, tape, losses, rep):
        trunk, towers = self.split()
        per_task = [tape.gradient(loss, [rep] + towers) for loss in losses]
        rows = tf.vectorized_map(
            lambda c: tape.gradient(rep, trunk, output_gradients=c),
            tf.stack([g[0] for g in per_task]),
        )
        grads = [tf.reduce_sum(r, 0) for r in rows] + _summed([g[1:] for g in per_task])
        return grads, trunk + towers


def build(num_tasks: int, plain: bool, width: int, input_dim: int, cls=None):
    inputs = keras.Input((input_dim,))
    h = inputs
    for i in range(3):
        h = keras.layers.Dense(width, activation="relu", name=f"trunk_{i}")(h)
    if not plain:
        h = keras_mtl.layers.SharedRepresentation(name="shared")(h)
    outputs = {
        f"t{t}": keras.layers.Dense(1, name=f"t{t}")(
            keras.layers.Dense(128, activation="relu", name=f"tower_{t}")(h)
        )
        for t in range(num_tasks)
    }
    if cls is BareVectorized:
        outputs["rep"] = h
    cls = cls or (keras.Model if plain else keras_mtl.MultiTaskModel)
    return cls(inputs=inputs, outputs=outputs)


def configs(num_tasks: int, balancers: list[str], modes: list[str], rep_balancers: list[str]):
    bare = ["bare_loop", "bare_jacobian", "bare_vectorized"]
    rows = [("plain", None, None)] + [(name, None, None) for name in bare]
    rows += [("ew", "ew", "auto")]
    rows += [(mode, "linear", mode) for mode in modes]
    rows += [(b, b, "auto") for b in balancers]
    rows += [(f"{b}@representation", b, "representation") for b in rep_balancers]
    return rows


def make(num_tasks, name, balancer, mode, width, input_dim):
    keras.utils.set_random_seed(0)
    bare = {
        "bare_loop": BareLoop,
        "bare_jacobian": BareJacobian,
        "bare_vectorized": BareVectorized,
    }.get(name)
    model = build(
        num_tasks,
        plain=name == "plain" or bare is not None,
        width=width,
        input_dim=input_dim,
        cls=bare,
    )
    loss = {f"t{t}": "mse" for t in range(num_tasks)}
    if name == "plain":
        model.compile(optimizer="sgd", loss=loss)
    elif bare is not None:
        model.compile(optimizer="sgd")
    else:
        model.compile(
            optimizer="sgd",
            loss=loss,
            balancer=LinearJacobian() if balancer == "linear" else balancer,
            gradient_mode=mode,
        )
    return model


def multiply_adds(num_tasks: int, batch: int, width: int, input_dim: int, tower: int = 128):
    """Multiply-adds of the matmuls in one step of plain fit and of T per-task backward passes.

    A backward pass through a dense layer costs two forward passes (kernel and input gradients), less
    the input gradient of the first layer, whose input is data. Plain fit runs one backward pass
    through everything; the per-task loop runs the trunk's backward pass once per task.

    Returns:
        `(plain, per_task)`, numbers of multiply-adds.
    """
    trunk = batch * (input_dim * width + 2 * width * width)
    first = batch * input_dim * width
    towers = num_tasks * batch * (width * tower + tower)
    plain = 3 * trunk - first + 3 * towers
    per_task = trunk + towers + num_tasks * (2 * trunk - first) + 2 * towers
    return plain, per_task


def traced_matmuls(model, x, y) -> list[tuple]:
    """The MatMul ops of `model.train_step` traced on the batch `(x, y)`.

    Returns:
        One `(a, b, transpose_a, transpose_b)` per op; `a` and `b` are `(name, shape)` of the
        operand tensors, so that ops reading one tensor (a kernel, read by the forward pass and
        every task's backward pass) can be replayed on one tensor.
    """
    batch = (tf.constant(x), {k: tf.constant(v) for k, v in y.items()})
    graph = tf.function(model.train_step).get_concrete_function(batch).graph

    def operand(tensor):
        return tensor.name, tuple(tensor.shape.as_list())

    return [
        (
            operand(op.inputs[0]),
            operand(op.inputs[1]),
            op.get_attr("transpose_a"),
            op.get_attr("transpose_b"),
        )
        for op in graph.get_operations()
        if op.type == "MatMul"
    ]


class MatmulReplay:
    """Runs the MatMul ops of a traced step (as from `traced_matmuls`) alone, on random inputs.

    Operands with one name share one random tensor, as they share memory in the step; the
    inputs are arguments, so that Grappler cannot fold them. No op waits for another, whereas data
    dependencies order them in the step, so the time is a lower bound for the same matmuls there.

    Args:
        matmuls: the ops, as `traced_matmuls` returns them.
    """

    def __init__(self, matmuls: list[tuple]):
        sources = {}
        for a, b, _, _ in matmuls:
            sources.update([a, b])
        names = list(sources)
        self.tensors = [tf.random.normal(sources[n]) / sources[n][-1] ** 0.5 for n in names]
        plan = [(names.index(a[0]), names.index(b[0]), ta, tb) for a, b, ta, tb in matmuls]

        @tf.function
        def run(tensors):
            return [
                tf.matmul(tensors[i], tensors[j], transpose_a=ta, transpose_b=tb)
                for i, j, ta, tb in plan
            ]

        self._run = run
        run(self.tensors)  # traced here, outside the timings
        self.times: list[float] = []

    def time(self, steps: int) -> None:
        """Runs the ops `steps` times, appending each wall time to `times`."""
        for _ in range(steps):
            start = time.perf_counter()
            self._run(self.tensors)
            self.times.append(time.perf_counter() - start)


def measure(args) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch * args.steps, args.input_dim)).astype("float32")
    results = []
    for num_tasks in args.tasks:
        y = {f"t{t}": rng.normal(size=(len(x), 1)).astype("float32") for t in range(num_tasks)}
        first = (x[: args.batch], {k: v[: args.batch] for k, v in y.items()})
        rows = configs(num_tasks, args.balancers, args.modes, args.rep_balancers)
        runs, timers = {}, {}
        for name, balancer, mode in rows:
            model = make(num_tasks, name, balancer, mode, args.width, args.input_dim)
            # Warm-up epoch: tracing and first-call costs stay out of the timings.
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
            timers[name] = StepTimer()
            runs[name] = lambda model=model, y=y, timer=timers[name]: model.fit(
                x, y, batch_size=args.batch, epochs=1, verbose=0, shuffle=False, callbacks=[timer]
            )
            if name in ("plain", "bare_loop"):
                replay = MatmulReplay(traced_matmuls(model, *first))
                timers[f"{name} matmuls"] = replay
                runs[f"{name} matmuls"] = lambda replay=replay: replay.time(args.steps)
        names = list(runs)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name]()
        quiet = {n: float(np.percentile(timers[n].times, args.percentile)) for n in names}
        median = {n: statistics.median(timers[n].times) for n in names}
        for name in names:
            row = {
                "T": num_tasks,
                "config": name,
                "ms": 1000 * quiet[name],
                "ratio": quiet[name] / quiet["plain"],
                "median_ms": 1000 * median[name],
                "median_ratio": median[name] / median["plain"],
            }
            results.append(row)
            print(
                f"T={num_tasks:<3} {name:<22} {row['ms']:8.2f} ms/step {row['ratio']:5.2f}x   "
                f"median {row['median_ms']:8.2f} ms {row['median_ratio']:5.2f}x",
                flush=True,
            )
        plain_macs, loop_macs = multiply_adds(num_tasks, args.batch, args.width, args.input_dim)
        # bare_loop's matmuls plus plain fit's time outside its own matmuls: a per-task loop
        # that spends no more than plain fit on everything else.
        rest = quiet["plain"] - quiet["plain matmuls"]
        print(
            f"T={num_tasks:<3} bare_loop matmuls + plain fit's {1000 * rest:.2f} ms besides its "
            f"matmuls: {(quiet['bare_loop matmuls'] + rest) / quiet['plain']:.2f}x plain fit; "
            f"multiply-adds {loop_macs / plain_macs:.2f}x those of plain fit",
            flush=True,
        )
    return results


def table(results: list[dict], percentile: float) -> str:
    lines = [
        f"| T | config | ms/step (p{percentile:g}) | vs plain fit | median ms/step | median vs plain |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['T']} | {r['config']} | {r['ms']:.2f} | {r['ratio']:.2f}x "
            f"| {r['median_ms']:.2f} | {r['median_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="2,5,10", help="comma-separated task counts")
    parser.add_argument("--balancers", default="", help="comma-separated balancer names")
    parser.add_argument(
        "--rep-balancers",
        default="",
        help="balancers also measured with gradient_mode='representation'",
    )
    parser.add_argument(
        "--modes",
        default="loop,jacobian,representation",
        help="gradient modes measured with a linear Jacobian balancer",
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument(
        "--percentile",
        type=float,
        default=10.0,
        help="percentile of the per-step times compared (noise only ever adds time)",
    )
    parser.add_argument("--steps", type=int, default=100, help="steps per timed epoch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--input-dim", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    args.tasks = [int(t) for t in args.tasks.split(",") if t]
    args.balancers = [b for b in args.balancers.split(",") if b]
    args.modes = [m for m in args.modes.split(",") if m]
    args.rep_balancers = [b for b in args.rep_balancers.split(",") if b]
    if args.quick:
        args.tasks, args.repeats, args.steps, args.width, args.input_dim = [2], 2, 3, 32, 16
    results = measure(args)
    print()
    print(table(results, args.percentile))
    return results


if __name__ == "__main__":
    main()
