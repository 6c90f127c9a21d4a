import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "mode, balancer, extra",
    [
        ("loop", "ema", []),
        ("jacobian", "ema", []),
        ("loop", "db_mtl", []),
        ("loop", "imtl", ["reg"]),
    ],
)
def test_mirrored_update_equals_single_device_update_on_global_batch(mode, balancer, extra):
    # "ema" is a small non-linear stateful test balancer; DB-MTL's state has one
    # entry per shared parameter, created before training by `fit`. IMTL with
    # weight penalties: its trainable scales and the penalties' gradients are
    # applied once per replica too, so each must be divided by the replicas.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.models.mirrored_check", mode, balancer, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["moved"] > 1e-2, report  # the steps changed the weights
    assert report["max_var_diff"] < 1e-5, report
    single_count, mirror_count = report["balancer_vars"]
    # Every balancer variable is compared: DB-MTL has step, moving norms and gradients.
    assert single_count == mirror_count >= (3 if balancer == "db_mtl" else 1), report
    assert report["balancer_diff"] < 1e-6, report
