"""The `keras-mtl` command line (its parser is in `keras_mtl_cli`, which imports no TensorFlow)."""

from __future__ import annotations

import argparse
import logging
import sys

from keras_mtl_cli import parser


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
        The process exit status, as `run`.

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
    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Runs a parsed `keras-mtl` command.

    Args:
        args: the arguments, as `keras_mtl_cli.parser()` parses them.

    Returns:
        The process exit status: 0 on success, 2 when the command's
        arguments are invalid or a file or folder it needs cannot be read
        or written (the error is printed to stderr).

    Example:

    >>> from keras_mtl.cli import run
    >>> from keras_mtl_cli import parser
    >>> run(parser().parse_args(["bench", "--dataset", "no_such_dataset"]))
    2
    """
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
        except (ValueError, OSError) as error:
            print(f"keras-mtl bench: error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
