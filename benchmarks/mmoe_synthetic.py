"""The synthetic experiment of the MMoE paper (Ma et al., KDD 2018, Sec. 4.1-4.3).

Two regression tasks whose correlation p is set exactly (`keras_mtl.datasets.synthetic`: d = 100,
c = 1, m = 10 sinusoids). Three architectures with about the same number of parameters, as in the
paper's Sec. 4.3:

    shared_bottom   Dense(113, relu) shared trunk
    omoe            one-gate mixture: 8 experts Dense(16, relu), one softmax gate for both tasks
    mmoe            8 experts Dense(16, relu), one softmax gate per task

each followed by one tower per task, Dense(8, relu) -> Dense(1). Every run draws new data and a
new initialisation from its seed; all runs use `keras_mtl.MultiTaskModel` with equal weighting,
MSE losses and Adam. The script prints, per correlation and model, the final test loss (mean of
the two tasks' MSE) over seeds: mean, standard deviation and worst seed, and how the gap between
the shared bottom and MMoE changes with the correlation; then the same for the final training
loss (the paper's Fig. 4 compares training losses).

Usage:
    python benchmarks/mmoe_synthetic.py                     # 10 seeds, 10k examples, 30 epochs
    python benchmarks/mmoe_synthetic.py --quick             # reduced setting, about 3 minutes
    python benchmarks/mmoe_synthetic.py --seeds 20 --epochs 50 --correlations 0.5,0.9,1.0

The paper averages 200 runs and reports training-loss curves; the reduced setting is a smaller
version of the same comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.datasets import synthetic  # noqa: E402
from keras_mtl.layers import MMoE, SharedBottom  # noqa: E402

ARCHITECTURES = ("shared_bottom", "omoe", "mmoe")
TASKS = synthetic.TASKS


def build_model(arch: str, input_dim: int, seed: int) -> keras_mtl.MultiTaskModel:
    """One of the three architectures of the paper's Sec. 4.3."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_dim,))
    if arch == "shared_bottom":
        h = SharedBottom(units=(113,), name="bottom")(inputs)
        per_task = [h, h]
    elif arch == "omoe":
        h = MMoE(num_tasks=1, num_experts=8, expert_units=(16,), name="omoe")(inputs)[0]
        per_task = [h, h]
    else:
        per_task = MMoE(num_tasks=2, num_experts=8, expert_units=(16,), name="mmoe")(inputs)
    outputs = {
        task: keras.layers.Dense(1, name=task)(
            keras.layers.Dense(8, activation="relu", name=f"{task}_tower")(h)
        )
        for task, h in zip(TASKS, per_task, strict=True)
    }
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


def _mse(model, x, y) -> float:
    pred = model.predict(x, batch_size=4096, verbose=0)
    return float(np.mean([np.mean((pred[t] - y[t]) ** 2) for t in TASKS]))


def run(arch: str, correlation: float, seed: int, args) -> tuple[float, float]:
    """Trains one model; returns its final (train, test) loss, each the mean of the tasks' MSE."""
    (x, y), (xt, yt) = synthetic.load_data(
        num_train=args.num_train,
        num_test=args.num_test,
        correlation=correlation,
        input_dim=args.input_dim,
        seed=seed,
        param_std=args.param_std,
        noise_std=args.noise_std,
        sinusoids=args.sinusoids,
    )
    model = build_model(arch, args.input_dim, seed)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="mse", balancer="ew")
    model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    return _mse(model, x, y), _mse(model, xt, yt)


def _table(results, correlations, index: int, title: str) -> None:
    print(f"\n{title}\n")
    print("| correlation | model | mean | std over seeds | worst seed |")
    print("|---|---|---|---|---|")
    for correlation in correlations:
        for arch in ARCHITECTURES:
            losses = [r[index] for r in results[(correlation, arch)]]
            std = statistics.stdev(losses) if len(losses) > 1 else 0.0
            print(
                f"| {correlation:g} | {arch} | {np.mean(losses):.4f} | {std:.4f} | "
                f"{max(losses):.4f} |"
            )
    print("\n| correlation | shared_bottom - mmoe | omoe - mmoe |")
    print("|---|---|---|")
    for correlation in correlations:
        mean = {a: np.mean([r[index] for r in results[(correlation, a)]]) for a in ARCHITECTURES}
        print(
            f"| {correlation:g} | {mean['shared_bottom'] - mean['mmoe']:+.4f} | "
            f"{mean['omoe'] - mean['mmoe']:+.4f} |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced setting: 6 seeds, 4000 examples, 10 epochs (about 3 minutes)",
    )
    parser.add_argument("--correlations", default="0.5,0.9,1.0")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-test", type=int, default=2000)
    parser.add_argument("--input-dim", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--param-std",
        type=float,
        default=1.0,
        help="std of the sinusoids' alpha_i, beta_i (loader default 0.1; 1.0 makes the sines matter)",
    )
    parser.add_argument(
        "--noise-std", type=float, default=0.1, help="std of the label noise (loader default 0.1)"
    )
    parser.add_argument(
        "--sinusoids",
        default="index",
        choices=("random", "index"),
        help="alpha_i, beta_i: alpha_i = i, beta_i = i^2 (default, the public generator of the paper's experiment) or random N(0, param_std^2)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.num_train, args.epochs, args.num_test = 6, 4000, 10, 1000
        args.batch_size, args.learning_rate = 64, 3e-3
    correlations = [float(c) for c in args.correlations.split(",")]

    print(
        f"settings: seeds={args.seeds} num_train={args.num_train} num_test={args.num_test} "
        f"epochs={args.epochs} batch_size={args.batch_size} lr={args.learning_rate} "
        f"param_std={args.param_std} noise_std={args.noise_std} sinusoids={args.sinusoids}"
    )
    print(
        "parameters: "
        + ", ".join(
            f"{arch}={build_model(arch, args.input_dim, 0).count_params()}"
            for arch in ARCHITECTURES
        )
    )
    start = time.perf_counter()
    results = {}
    for correlation in correlations:
        for seed in range(args.seeds):
            for arch in ARCHITECTURES:
                results.setdefault((correlation, arch), []).append(
                    run(arch, correlation, seed, args)
                )
    print(
        f"\n{len(correlations) * args.seeds * len(ARCHITECTURES)} runs in "
        f"{time.perf_counter() - start:.0f} s"
    )
    _table(results, correlations, 1, "Final test loss (mean of the two tasks' MSE)")
    _table(results, correlations, 0, "Final training loss (same, on the training set)")


if __name__ == "__main__":
    main()
