"""The `keras-mtl` command line."""

from __future__ import annotations

import argparse
import logging
import math
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, received {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-mtl",
        description="Multi-task learning for Keras 3: demos and benchmarks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a shared-bottom model on the MMoE synthetic data with several balancers",
        description="Trains a shared-bottom MLP on the two-task synthetic data of the MMoE "
        "paper (Ma et al., KDD 2018) once per balancer and prints per-task test MSE and the "
        "time per training step.",
    )
    demo.add_argument(
        "--balancers",
        default=None,
        help="comma-separated balancer names (default: ew,uw,dwa,pcgrad,mgda,db_mtl "
        "where available)",
    )
    demo.add_argument(
        "--epochs", type=_positive_int, default=5, help="epochs per balancer (default 5)"
    )
    demo.add_argument(
        "--correlation", type=float, default=0.5, help="task correlation in [-1, 1] (default 0.5)"
    )
    demo.add_argument(
        "--samples", type=_positive_int, default=8000, help="training examples (default 8000)"
    )
    demo.add_argument(
        "--batch-size", type=_positive_int, default=128, help="batch size (default 128)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    bench = commands.add_parser(
        "bench",
        help="train architectures x balancers (and STL baselines) on a dataset and report",
        description="Trains every architecture x balancer combination over seeds, and the "
        "single-task baselines (cached), then prints per-task test metrics (mean ± std), "
        "Δm against STL and time per epoch relative to 'ew', and writes results.json, "
        "results.csv and pareto.png.",
    )
    bench.add_argument(
        "--dataset",
        default="census_income",
        help="census_income, census_income_group2, multi_mnist, multi_fashion, qm9, "
        "multi_fashion_mnist or synthetic (default census_income)",
    )
    bench.add_argument(
        "--arch",
        default="mmoe",
        help="comma-separated architectures: shared_bottom, mmoe (default mmoe)",
    )
    bench.add_argument(
        "--balancers",
        default=None,
        help="comma-separated balancer names (default ew; with --quick ew,mgda where available)",
    )
    bench.add_argument(
        "--seeds", type=_positive_int, default=None, help="number of seeds (default 1)"
    )
    bench.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default 5)")
    bench.add_argument(
        "--batch-size", type=_positive_int, default=256, help="batch size (default 256)"
    )
    bench.add_argument(
        "--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default 1e-3)"
    )
    bench.add_argument(
        "--data-dir", default=None, help="data folder (default $KERAS_MTL_DATA_DIR, else download)"
    )
    bench.add_argument("--out", default="bench_out", help="output folder (default bench_out)")
    bench.add_argument(
        "--cache-dir",
        default=None,
        help="STL cache folder (default ~/.keras/keras_mtl/bench_cache)",
    )
    bench.add_argument(
        "--max-train",
        type=_positive_int,
        default=None,
        help="use at most this many training examples",
    )
    bench.add_argument(
        "--max-eval",
        type=_positive_int,
        default=None,
        help="use at most this many validation / test examples",
    )
    bench.add_argument("--no-stl", action="store_true", help="skip STL baselines and Δm")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="tiny run (10000 train examples, 2 epochs, 1 seed), under a minute",
    )
    return parser


def _bench(args) -> int:
    from keras_mtl import balancers as registry
    from keras_mtl.bench import BenchConfig, run_bench

    def names(text):
        return tuple(n.strip() for n in text.split(",") if n.strip())

    if args.balancers:
        balancers = names(args.balancers)
    elif args.quick:
        balancers = tuple(b for b in ("ew", "mgda") if b in registry.available())
    else:
        balancers = ("ew",)
    config = BenchConfig(
        dataset=args.dataset,
        archs=names(args.arch),
        balancers=balancers,
        seeds=1 if args.seeds is None else args.seeds,
        epochs=(2 if args.quick else 5) if args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        data_dir=args.data_dir,
        out_dir=args.out,
        cache_dir=args.cache_dir,
        max_train=10000 if args.max_train is None and args.quick else args.max_train,
        max_eval=5000 if args.max_eval is None and args.quick else args.max_eval,
        stl=not args.no_stl,
    )
    run_bench(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keras-mtl` console script.

    Args:
        argv: arguments without the program name; `sys.argv[1:]` by default.

    Returns:
        The process exit status: 0 on success, 2 when the command's
        arguments are invalid (the error is printed to stderr).

    Raises:
        SystemExit: from `argparse`, for unknown options, malformed option
            values and `--help`.

    Example:

    >>> from keras_mtl.cli import main
    >>> main(["demo", "--balancers", "no_such_balancer"])
    2
    >>> main(["bench", "--dataset", "synthetic", "--arch", "no_such_arch"])
    2
    """
    args = _parser().parse_args(argv)
    # Keras's per-model predict functions trigger TensorFlow's retracing warning
    # when many models are trained in one process, as the commands do.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if args.command == "demo":
        from keras_mtl.demo import run_demo

        balancers = (
            None
            if args.balancers is None
            else [b.strip() for b in args.balancers.split(",") if b.strip()]
        )
        try:
            run_demo(
                balancers=balancers,
                epochs=args.epochs,
                correlation=args.correlation,
                num_train=args.samples,
                batch_size=args.batch_size,
                seed=args.seed,
            )
        except ValueError as error:
            print(f"keras-mtl demo: error: {error}", file=sys.stderr)
            return 2
    if args.command == "bench":
        try:
            return _bench(args)
        except (ValueError, FileNotFoundError) as error:
            print(f"keras-mtl bench: error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
