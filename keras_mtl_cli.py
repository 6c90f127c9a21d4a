"""Launcher and argument parser of the `keras-mtl` command (`keras_mtl.cli` runs it).

A module of its own, outside the `keras_mtl` package: importing anything in
the package imports TensorFlow, which takes seconds and whose C++ logging
reads its level once, at start-up. Here `--help` and invalid arguments are
answered before TensorFlow is imported, and TensorFlow is quieted when it is:
without this, the command would open with TensorFlow's CPU-feature notice and
CUDA errors on machines without a GPU.
"""

import argparse
import math
import os
import sys


def _checked(convert, valid, expected: str):
    """An argparse `type` converting with `convert` and refusing values not `valid`."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked(float, lambda v: 0 < v < math.inf, "a positive finite number")


def parser() -> argparse.ArgumentParser:
    """The argument parser of `keras-mtl`.

    Returns:
        An `argparse.ArgumentParser` with the `demo` and `bench` subcommands.

    Example:

    >>> from keras_mtl_cli import parser
    >>> args = parser().parse_args(["demo", "--epochs", "2"])
    >>> args.command, args.epochs, args.seed
    ('demo', 2, 0)
    """
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
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")

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
        help="tiny run (10000 train examples, 2 epochs, 1 seed): about a minute on 2 CPU "
        "cores, more the first time a dataset is parsed",
    )
    return parser


def main() -> int:
    """Parses `sys.argv`, quiets TensorFlow's C++ logging (unless the user
    set a level), then runs the command with `keras_mtl.cli.run`.

    Returns:
        The command's exit status.

    Raises:
        SystemExit: from `argparse`, for `--help` and invalid arguments.
    """
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = parser().parse_args()
    return _import_cli(quiet).run(args)


def _import_cli(quiet: bool):
    """Imports `keras_mtl.cli`, with file descriptor 2 on /dev/null when `quiet`.

    TensorFlow's absl logging writes its start-up lines to the process's
    stderr before it reads TF_CPP_MIN_LOG_LEVEL; only the file descriptor
    can silence them. It is restored before an import error propagates, so
    that its traceback shows.
    """
    if not quiet:
        from keras_mtl import cli

        return cli
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        from keras_mtl import cli
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return cli
