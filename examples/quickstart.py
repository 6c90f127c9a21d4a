"""Quick start: a shared-bottom model on the MMoE synthetic tasks, with missing labels.

Run: python examples/quickstart.py [--epochs N] [--balancer NAME]
"""

import argparse

import keras
import numpy as np

import keras_mtl


def main(epochs: int = 3, balancer: str = "ew", num_train: int = 4000) -> dict:
    (x, y), (x_test, y_test) = keras_mtl.datasets.synthetic.load_data(
        num_train=num_train, num_test=1000, correlation=0.7
    )
    # Pretend a third of task_2's labels were never collected: NaN marks them.
    y["task_2"] = y["task_2"].copy()
    y["task_2"][::3] = np.nan

    inputs = keras.Input(x.shape[1:])
    h = keras_mtl.layers.SharedBottom(units=(64, 32))(inputs)
    h = keras_mtl.layers.SharedRepresentation()(h)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in ("task_1", "task_2")}
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"task_1": "mse", "task_2": "mse"},
        balancer=balancer,
        metrics={"task_1": ["mae"], "task_2": ["mae"]},
    )
    model.fit(x, y, epochs=epochs, batch_size=128, validation_split=0.1, verbose=2)
    result = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print({k: round(v, 4) for k, v in result.items()})
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--balancer", default="ew")
    args = parser.parse_args()
    main(args.epochs, args.balancer)
