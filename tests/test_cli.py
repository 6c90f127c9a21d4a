import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from keras_mtl.cli import main


def test_demo_prints_a_table_with_a_row_per_balancer(capsys):
    assert main(["demo", "--balancers", "ew,fixed", "--epochs", "1", "--samples", "512"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-4].split()[:3] == ["balancer", "task_1", "test"]
    assert lines[-2].split()[0] == "ew" and lines[-1].split()[0] == "fixed"
    assert lines[-2].split()[-1] == "1.00x"
    # Equal weights and fixed weights of 1 are the same method: same test errors.
    assert lines[-2].split()[1:3] == lines[-1].split()[1:3]
    assert float(lines[-2].split()[1]) < 3.0


def test_demo_rejects_unknown_balancers(capsys):
    assert main(["demo", "--balancers", "nope"]) == 2
    assert "Unknown balancers ['nope']" in capsys.readouterr().err


def test_help_documents_the_options():
    done = subprocess.run(
        [sys.executable, "-m", "keras_mtl.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for option in ("--balancers", "--epochs", "--correlation", "--samples", "--seed"):
        assert option in done.stdout


def test_the_launcher_quiets_tensorflow_before_importing_it():
    # What the `keras-mtl` console script runs, in a process without a log level.
    script = (
        "import os, sys\n"
        "import keras_mtl_cli\n"
        "assert 'tensorflow' not in sys.modules\n"
        "sys.argv[1:] = ['demo', '--help']\n"
        "try:\n"
        "    keras_mtl_cli.main()\n"
        "except SystemExit as done:\n"
        "    print('exit', done.code, 'level', os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert "--balancers" in done.stdout
    assert done.stdout.strip().endswith("exit 0 level 3")


def _launch(argv, script="import sys, keras_mtl_cli\nsys.exit(keras_mtl_cli.main())\n"):
    # What the `keras-mtl` console script runs, in a process without a log level.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env
    )


def test_help_is_answered_before_tensorflow_is_imported():
    script = (
        "import sys, keras_mtl_cli\n"
        "try:\n"
        "    keras_mtl_cli.main()\n"
        "finally:\n"
        "    print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
    )
    done = _launch(["--help"], script)
    assert (done.returncode, done.stderr) == (0, "")
    assert "{demo,bench}" in done.stdout
    assert "demo" in done.stdout.split("positional arguments:")[1]
    assert "bench" in done.stdout.split("positional arguments:")[1]
    assert done.stdout.strip().endswith("tensorflow imported: False")
    # Invalid arguments too: argparse's message only.
    done = _launch(["demo", "--seed", "-1", "x"], script)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("keras-mtl demo: error: argument --seed:")
    assert done.stdout.strip() == "tensorflow imported: False"


def test_tensorflow_start_up_lines_do_not_reach_stderr():
    # A command that imports TensorFlow and fails fast: only its own error is on stderr.
    done = _launch(["demo", "--balancers", "nope"])
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        line for line in done.stderr.splitlines() if line.startswith("keras-mtl demo: error:")
    ]
    assert "Unknown balancers ['nope']" in done.stderr


def test_an_import_error_in_the_launcher_still_shows_its_traceback():
    script = (
        "import sys, keras_mtl_cli\n"
        "sys.modules['keras_mtl'] = None\n"
        "sys.exit(keras_mtl_cli.main())\n"
    )
    done = _launch(["demo"], script)
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "ModuleNotFoundError: import of keras_mtl halted" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs", "0"], "argument --epochs: expected a positive integer, received '0'"),
        (["demo", "--samples", "-5"], "argument --samples: expected a positive integer"),
        (["demo", "--batch-size", "x"], "argument --batch-size: expected a positive integer"),
        (
            ["demo", "--seed", "-1"],
            "argument --seed: expected a non-negative integer, received '-1'",
        ),
        (["demo", "--seed", "1.5"], "argument --seed: expected a non-negative integer"),
        (
            ["bench", "--lr", "nan"],
            "argument --lr: expected a positive finite number, received 'nan'",
        ),
        (["bench", "--lr", "-1"], "argument --lr: expected a positive finite number"),
        (["bench", "--lr", "0"], "argument --lr: expected a positive finite number"),
        (["bench", "--max-train", "0"], "argument --max-train: expected a positive integer"),
        (["bench", "--max-eval", "-3"], "argument --max-eval: expected a positive integer"),
        (["bench", "--seeds", "0"], "argument --seeds: expected a positive integer"),
    ],
)
def test_bad_option_values_are_named(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_without_balancers_is_an_error(capsys):
    assert main(["demo", "--balancers", ","]) == 2
    assert "expected names from" in capsys.readouterr().err


def test_bench_options_reach_the_config(monkeypatch):
    import keras_mtl.bench

    seen = []
    monkeypatch.setattr(keras_mtl.bench, "run_bench", seen.append)
    # Spaces and empty entries (a trailing comma) are dropped from the lists.
    argv = ["bench", "--dataset", "qm9", "--arch", "mmoe, shared_bottom", "--balancers", "uw,,ew,"]
    argv += ["--seeds", "3", "--epochs", "4", "--batch-size", "64", "--lr", "0.02"]
    argv += ["--data-dir", "/d", "--out", "/o", "--cache-dir", "/c", "--max-train", "100"]
    argv += ["--max-eval", "50", "--no-stl"]
    assert main(argv) == 0
    (config,) = seen
    assert (config.dataset, config.archs, config.balancers) == (
        "qm9",
        ("mmoe", "shared_bottom"),
        ("uw", "ew"),
    )
    assert (config.seeds, config.epochs, config.batch_size, config.learning_rate) == (
        3,
        4,
        64,
        0.02,
    )
    assert (config.data_dir, config.out_dir, config.cache_dir) == ("/d", "/o", "/c")
    assert (config.max_train, config.max_eval, config.stl) == (100, 50, False)
    # --quick only fills what was not given.
    assert main(["bench", "--quick", "--epochs", "3"]) == 0
    quick = seen[1]
    assert (quick.epochs, quick.seeds, quick.max_train, quick.max_eval, quick.stl) == (
        3,
        1,
        10000,
        5000,
        True,
    )


def test_demo_options_reach_run_demo(monkeypatch):
    import keras_mtl.demo

    seen = []
    monkeypatch.setattr(keras_mtl.demo, "run_demo", lambda **kwargs: seen.append(kwargs))
    argv = ["demo", "--balancers", "ew, uw", "--epochs", "2", "--correlation", "-0.3"]
    argv += ["--samples", "300", "--batch-size", "16", "--seed", "7"]
    assert main(argv) == 0
    assert seen == [
        {
            "balancers": ["ew", "uw"],
            "epochs": 2,
            "correlation": -0.3,
            "num_train": 300,
            "batch_size": 16,
            "seed": 7,
        }
    ]


def test_demo_defaults_are_run_demo_defaults_and_documented(monkeypatch, capsys):
    import inspect

    import keras_mtl.demo

    defaults = {
        name: p.default
        for name, p in inspect.signature(keras_mtl.demo.run_demo).parameters.items()
        if name != "print_fn"
    }
    seen = []
    monkeypatch.setattr(keras_mtl.demo, "run_demo", lambda **kwargs: seen.append(kwargs))
    assert main(["demo"]) == 0
    assert seen == [defaults]
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for option, name in [
        ("--epochs", "epochs"),
        ("--correlation", "correlation"),
        ("--samples", "num_train"),
        ("--batch-size", "batch_size"),
        ("--seed", "seed"),
    ]:
        assert f"(default {defaults[name]})" in help_text.split(option, 2)[2].split("--")[0]


def test_bench_defaults_are_bench_config_defaults_and_quick_fills_a_tiny_run(monkeypatch):
    import keras_mtl.bench
    from keras_mtl import balancers
    from keras_mtl.bench import BenchConfig

    seen = []
    monkeypatch.setattr(keras_mtl.bench, "run_bench", seen.append)
    assert main(["bench"]) == 0
    # No option given: exactly the documented BenchConfig defaults.
    assert seen == [BenchConfig()]
    assert main(["bench", "--quick"]) == 0
    quick = seen[1]
    expected = tuple(b for b in ("ew", "mgda") if b in balancers.available())
    assert (quick.balancers, quick.epochs, quick.seeds) == (expected, 2, 1)
    assert (quick.max_train, quick.max_eval, quick.batch_size, quick.stl) == (
        10000,
        5000,
        256,
        True,
    )


def test_the_installed_keras_mtl_command_answers_help():
    # The console script that README's first command runs (`pip install . && keras-mtl demo`),
    # installed next to this interpreter by `pip install`.
    script = shutil.which("keras-mtl", path=str(pathlib.Path(sys.executable).parent))
    assert script, "the keras-mtl console script is not installed next to the interpreter"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [script, "demo", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("usage: keras-mtl demo")
    for option in ("--balancers", "--epochs", "--samples", "--seed"):
        assert option in done.stdout
    done = subprocess.run([script, "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "invalid choice: 'nope'" in done.stderr
