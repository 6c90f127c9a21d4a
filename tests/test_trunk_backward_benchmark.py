import importlib.util
import pathlib

import numpy as np
import tensorflow as tf

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "trunk_backward.py"
_spec = importlib.util.spec_from_file_location("trunk_backward", _PATH)
trunk_backward = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trunk_backward)


def test_batched_and_vectorized_gradients_equal_one_tape_per_task():
    trunk = trunk_backward.Trunk(num_tasks=3, batch=5, width=4, input_dim=6)
    batched = trunk.batched()
    vectorized = trunk.vectorized()
    for t in range(3):
        # A fresh tape per task, not the benchmark's loop: the reference is plain autodiff.
        with tf.GradientTape() as tape:
            h, _ = trunk._forward()
        expected = tape.gradient(h, trunk.variables, output_gradients=trunk.cotangents[t])
        for i, g in enumerate(expected):
            mine = batched[i][t]
            if g.shape.rank == 2:  # kernels come out as (units, fan_in)
                mine = tf.transpose(mine)
            np.testing.assert_allclose(mine, g, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(vectorized[i][t], g, rtol=1e-5, atol=1e-6)
    assert trunk_backward._max_difference(trunk) < 1e-5


def test_some_units_are_inactive_so_the_relu_masks_matter():
    trunk = trunk_backward.Trunk(num_tasks=2, batch=5, width=4, input_dim=6)
    _, acts = trunk._forward()
    assert all(0 < float(tf.reduce_mean(tf.cast(a > 0, tf.float32))) < 1 for a in acts[1:])


def test_multiply_adds_by_hand():
    # Kernels 4x3, 3x3, 3x3: per row, forward 30; each backward pass, kernel gradients 30 and
    # input gradients 18 (not of the data).
    trunk = trunk_backward.Trunk(num_tasks=2, batch=2, width=3, input_dim=4)
    assert trunk.multiply_adds() == 2 * 30 + 2 * 2 * (30 + 18)


def test_quick_run_prints_every_row(capsys):
    results = trunk_backward.main(["--quick"])
    out = capsys.readouterr().out
    assert [r["config"] for r in results] == ["loop", "vectorized", "batched", "stacked matmul"]
    assert all(r["ms"] > 0 and np.isfinite(r["gmacs"]) for r in results)
    assert [r["vs_loop"] is None for r in results] == [False, False, False, True]
    assert results[0]["vs_loop"] == 1.0
    assert "| 2 | stacked matmul |" in out and "| - |" in out
    assert "the loop's multiply-adds at the stacked matmul's rate" in out
