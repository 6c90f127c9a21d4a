"""`onednn_cpu_matmuls` against TensorFlow's own switch, in fresh processes."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("setting, expected", [("0", "False"), ("1", "True")])
def test_onednn_cpu_matmuls_follows_tf_enable_onednn_opts(setting, expected):
    # The variable is read once, when TensorFlow starts: a fresh process each,
    # without GPUs (products on a GPU make the answer False whatever oneDNN does).
    env = {
        **os.environ,
        "TF_ENABLE_ONEDNN_OPTS": setting,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keras_mtl.gradients.matmul_backend import onednn_cpu_matmuls; "
            "print(onednn_cpu_matmuls())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == expected
