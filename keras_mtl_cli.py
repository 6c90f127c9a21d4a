"""Launcher of the `keras-mtl` command (`keras_mtl.cli` does the work).

A module of its own, outside the `keras_mtl` package: importing anything in
the package imports TensorFlow, whose C++ logging reads its level once, at
start-up. Without this, the command would open with TensorFlow's
CPU-feature notice and CUDA errors on machines without a GPU.
"""

import os


def main() -> int:
    """Quiets TensorFlow's C++ logging (unless the user set a level), then
    runs `keras_mtl.cli.main`.

    Returns:
        The command's exit status.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_mtl.cli import main as cli_main

    return cli_main()
