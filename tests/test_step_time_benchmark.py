import importlib.util
import pathlib

import numpy as np
import pytest

from tests.models.helpers import traced_train_step

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "step_time.py"
_spec = importlib.util.spec_from_file_location("step_time", _PATH)
step_time = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_time)


def _traced_matmul_multiply_adds(model, x, y) -> int:
    """Sums m * k * n over the MatMul ops of the traced training step."""
    total = 0
    for op in traced_train_step(model, x, y).get_operations():
        if op.type != "MatMul":
            continue
        a, b = (t.shape.as_list() for t in op.inputs)
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else a
        n = b[0] if op.get_attr("transpose_b") else b[1]
        total += m * k * n
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
    assert _traced_matmul_multiply_adds(model, x, y) == expected


def test_multiply_adds_by_hand():
    # Input 4, trunk 4 -> 3 -> 3 -> 3, towers 3 -> 2 -> 1, batch 2, T = 2.
    # Forward: trunk 2 * (12 + 9 + 9) = 60, towers 2 * 2 * (6 + 2) = 32: 92.
    # Plain backward: kernel gradients 92, input gradients 92 - 24 (not of the data): 68. Total 252.
    # Per task: forward 92; each task's trunk backward 60 + 36, twice: 192; each tower's own
    # backward, kernels 32 and inputs 32 in all: 64. Total 348.
    assert step_time.multiply_adds(2, batch=2, width=3, input_dim=4, tower=2) == (252, 348)


def test_quick_run_prints_every_row_and_the_floor(capsys):
    results = step_time.main(["--quick"])
    out = capsys.readouterr().out
    assert [r["config"] for r in results] == [
        "plain",
        "bare_loop",
        "ew",
        "loop",
        "jacobian",
        "representation",
    ]
    assert all(r["ms"] > 0 and np.isfinite(r["ratio"]) for r in results)
    assert "matmul floor (computed)" in out and "| 2 | loop |" in out
