"""The `keras-mtl` command line."""

from __future__ import annotations

import argparse
import os
import sys


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
    demo.add_argument("--epochs", type=int, default=5, help="epochs per balancer (default 5)")
    demo.add_argument(
        "--correlation", type=float, default=0.5, help="task correlation in [-1, 1] (default 0.5)"
    )
    demo.add_argument("--samples", type=int, default=8000, help="training examples (default 8000)")
    demo.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keras-mtl` console script.

    Args:
        argv: arguments without the program name; `sys.argv[1:]` by default.

    Returns:
        The process exit status.
    """
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
