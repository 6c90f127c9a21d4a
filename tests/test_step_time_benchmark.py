import importlib.util
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "step_time.py"
_spec = importlib.util.spec_from_file_location("step_time", _PATH)
step_time = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_time)


def _multiply_adds(matmuls) -> int:
    """Sums m * k * n over MatMul ops as `traced_matmuls` gives them."""
    total = 0
    for (_, a), (_, b), transpose_a, transpose_b in matmuls:
        m, k = (a[1], a[0]) if transpose_a else a
        total += m * k * (b[0] if transpose_b else b[1])
    return total


@pytest.mark.parametrize("name", ["plain", "bare_loop"])
def test_multiply_adds_match_the_matmuls_of_the_traced_step(name):
    num_tasks, batch, width, input_dim = 3, 8, 16, 12
    model = step_time.make(num_tasks, name, None, None, width, input_dim)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, input_dim)).astype("float32")
    y = {f"t{t}": rng.normal(size=(batch, 1)).astype("float32") for t in range(num_tasks)}
    plain, per_task = step_time.multiply_adds(num_tasks, batch, width, input_dim)
    expected = plain if name == "plain" else per_task
    assert _multiply_adds(step_time.traced_matmuls(model, x, y)) == expected


def test_multiply_adds_by_hand():
    # Input 4, trunk 4 -> 3 -> 3 -> 3, towers 3 -> 2 -> 1, batch 2, T = 2.
    # Forward: trunk 2 * (12 + 9 + 9) = 60, towers 2 * 2 * (6 + 2) = 32: 92.
    # Plain backward: kernel gradients 92, input gradients 92 - 24 (not of the data): 68. Total 252.
    # Per task: forward 92; each task's trunk backward 60 + 36, twice: 192; each tower's own
    # backward, kernels 32 and inputs 32 in all: 64. Total 348.
    assert step_time.multiply_adds(2, batch=2, width=3, input_dim=4, tower=2) == (252, 348)


def test_quick_run_prints_every_row_and_the_matmul_line(capsys):
    results = step_time.main(["--quick"])
    out = capsys.readouterr().out
    assert [r["config"] for r in results] == [
        "plain",
        "plain matmuls",
        "bare_loop",
        "bare_loop matmuls",
        "bare_jacobian",
        "bare_vectorized",
        "ew",
        "loop",
        "jacobian",
        "representation",
    ]
    assert all(r["ms"] > 0 and np.isfinite(r["ratio"]) for r in results)
    assert "bare_loop matmuls + plain fit's" in out and "| 2 | loop |" in out


def test_traced_matmuls_share_the_kernels_the_tasks_read():
    # The forward pass and every task's backward pass read the same trunk kernels: one name each,
    # hence one tensor each in the replay, as in the step's memory.
    model = step_time.make(3, "bare_loop", None, None, 16, 12)
    x = np.zeros((8, 12), "float32")
    y = {f"t{t}": np.zeros((8, 1), "float32") for t in range(3)}
    matmuls = step_time.traced_matmuls(model, x, y)
    kernels = {src for a, b, _, _ in matmuls for src, shape in (a, b) if shape == (16, 16)}
    assert len(kernels) == 2  # trunk_1 and trunk_2


def test_matmul_replay_runs_the_given_shapes_and_transposes():
    # (32, 64)^T (48, 32)^T is a 64 x 32 x 48 matmul; without the transposes it would not run.
    a, b = ("a", (32, 64)), ("b", (48, 32))
    replay = step_time.MatmulReplay([(a, b, True, True)])
    replay.time(3)
    assert len(replay.times) == 3 and min(replay.times) > 0
    with pytest.raises(Exception, match="(?i)incompatible|dimensions|shape"):
        step_time.MatmulReplay([(a, b, False, False)])


@pytest.mark.parametrize("name", ["bare_jacobian", "bare_vectorized"])
def test_the_other_bare_steps_take_the_bare_loop_step(name):
    # The same update, through the Jacobian matrix or with the trunk's per-task backward passes
    # vectorised; the extra "rep" output of the vectorised model holds no variables, so the
    # weight lists line up.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 12)).astype("float32")
    y = {f"t{t}": rng.normal(size=(8, 1)).astype("float32") for t in range(3)}
    after = {}
    for config in ("bare_loop", name):
        model = step_time.make(3, config, None, None, 16, 12)
        before = [np.array(v) for v in model.trainable_variables]
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        after[config] = [np.array(v) for v in model.trainable_variables]
        assert not any(np.allclose(a, b) for a, b in zip(before, after[config], strict=True))
    for a, b in zip(after["bare_loop"], after[name], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
