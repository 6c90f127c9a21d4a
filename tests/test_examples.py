import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_trains_with_missing_labels():
    from keras_mtl.datasets import synthetic

    result = _load("quickstart").main(epochs=4, num_train=2000)
    _, (_, y_test) = synthetic.load_data(num_train=2000, num_test=1000, correlation=0.7)
    # Better than predicting the mean, whose error is the label variance.
    for task in ("task_1", "task_2"):
        assert result[f"{task}_loss"] < 0.8 * float(y_test[task].var())
