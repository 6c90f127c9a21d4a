import keras
import numpy as np
import pytest

import keras_mtl
from tests.models.helpers import NormalizedEMA, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}


def test_loss_keys_that_do_not_match_the_outputs_list_both():
    model = build()
    with pytest.raises(
        ValueError,
        match=r"Task outputs: \['task_1', 'task_2'\]\. Received keys: "
        r"\['task_1', 'income'\]",
    ):
        model.compile(optimizer="sgd", loss={"task_1": "mse", "income": "mse"})


def test_outputs_must_be_a_dict():
    x = keras.Input((3,))
    with pytest.raises(ValueError, match="Expected `outputs` to be a non-empty dict.*list"):
        keras_mtl.MultiTaskModel(inputs=x, outputs=[keras.layers.Dense(1)(x)])


def test_a_task_without_labels_is_named():
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(ValueError, match=r"no labels for \['task_2'\]"):
        model.fit(x, {"task_1": y["task_1"]}, verbose=0)
    with pytest.raises(ValueError, match="Expected `y` to be a dict"):
        model.fit(x, y["task_1"], verbose=0)


def test_unknown_balancer_lists_the_valid_names():
    model = build()
    with pytest.raises(ValueError, match=r"balancer='nope'.*") as info:
        model.compile(optimizer="sgd", loss=LOSS, balancer="nope")
    # Every valid name, not only a few.
    valid = keras_mtl.balancers.available()
    assert {"ew", "fixed", "pcgrad", "mgda", "db_mtl"} <= set(valid)
    missing = [name for name in valid if repr(name) not in str(info.value)]
    assert not missing, missing


def test_gradient_balancer_without_shared_variables():
    x, y = data(n=16)
    inputs = keras.Input((6,))
    outputs = {t: keras.layers.Dense(1, name=t)(inputs) for t in ("task_1", "task_2")}
    model = keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)
    model.compile(optimizer="sgd", loss=LOSS, balancer=NormalizedEMA())
    with pytest.raises(
        ValueError, match="no trainable variable receives gradient from more than one"
    ):
        model.fit(x, y, verbose=0)


def test_sample_weight_of_the_wrong_shape():
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    bad = {"task_1": np.ones((16, 3), "float32"), "task_2": np.ones((16,), "float32")}
    with pytest.raises(ValueError, match=r"sample_weight` for task 'task_1'.*\(16, 3\)"):
        model.fit(x, y, sample_weight=bad, batch_size=16, verbose=0)


def test_invalid_compile_options():
    model = build()
    with pytest.raises(ValueError, match="gradient_mode='fast'"):
        model.compile(optimizer="sgd", loss=LOSS, gradient_mode="fast")
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        model.compile(optimizer="sgd", loss=LOSS, nonfinite="ignore")
    with pytest.raises(ValueError, match="SharedRepresentation"):
        model.compile(
            optimizer="sgd", loss=LOSS, balancer=NormalizedEMA(), gradient_mode="representation"
        )
        model.fit(*data(n=8), verbose=0)


def test_y_of_the_wrong_type_is_named_as_given():
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(ValueError, match="Expected `y` to be a dict.*Received: y of type list"):
        model.fit(x, [y["task_1"], y["task_2"]], verbose=0)
    with pytest.raises(ValueError, match="Received: y of type ndarray"):
        model.evaluate(x, y["task_1"], verbose=0)


def test_unknown_loss_and_metric_names_name_their_task():
    model = build()
    with pytest.raises(ValueError, match=r"loss for task 'task_2'.*loss=\{'task_2': 'msee'\}"):
        model.compile(optimizer="sgd", loss={"task_1": "mse", "task_2": "msee"})
    with pytest.raises(ValueError, match=r"Expected `loss` to be a dict.*loss=\['mse', 'mse'\]"):
        model.compile(optimizer="sgd", loss=["mse", "mse"])
    with pytest.raises(
        ValueError, match=r"metric for task 'task_1'.*metrics=\{'task_1': \['mae', 'maee'\]\}"
    ):
        model.compile(optimizer="sgd", loss=LOSS, metrics={"task_1": ["mae", "maee"]})
    # Names that Keras resolves from the labels are left to Keras.
    model.compile(optimizer="sgd", loss=LOSS, metrics={"task_1": ["acc", "mae"]})


def test_shared_layers_must_be_layers_of_the_model():
    model = build()
    other = keras.layers.Dense(2, name="elsewhere")
    cases = [
        ("trunk", r"non-empty list of layers.*shared_layers='trunk'"),
        ([3], r"layers or layer names.*element of type int"),
        (["nope"], r"Layer 'nope' in `shared_layers` is not a layer of the model.*'trunk'"),
        ([other], r"Layer 'elsewhere' in `shared_layers` is not a layer of the model"),
    ]
    for shared_layers, message in cases:
        with pytest.raises(ValueError, match=message):
            model.compile(optimizer="sgd", loss=LOSS, shared_layers=shared_layers)
    model.compile(optimizer="sgd", loss=LOSS, shared_layers=["trunk", model.get_layer("task_1")])


def test_an_ambiguous_nested_layer_name_in_shared_layers():
    # Both trunks hold a layer called "dense_0": a name cannot say which.
    inputs = keras.Input((6,))
    a = keras_mtl.layers.SharedBottom(units=(4,), name="trunk_a")(inputs)
    b = keras_mtl.layers.SharedBottom(units=(4,), name="trunk_b")(inputs)
    h = keras.layers.Concatenate()([a, b])
    model = keras_mtl.MultiTaskModel(
        inputs=inputs, outputs={t: keras.layers.Dense(1, name=t)(h) for t in LOSS}
    )
    with pytest.raises(ValueError, match=r"'dense_0' in `shared_layers` is ambiguous.*2 layers"):
        model.compile(optimizer="sgd", loss=LOSS, shared_layers=["dense_0"])


def test_a_subclassed_output_without_a_loss_is_named():
    class ThreeOutputs(keras_mtl.MultiTaskModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.trunk = keras.layers.Dense(4)
            self.heads = {t: keras.layers.Dense(1) for t in ("task_1", "task_2", "task_3")}

        def call(self, inputs):
            h = self.trunk(inputs)
            return {t: head(h) for t, head in self.heads.items()}

    x, y = data(n=16)
    model = ThreeOutputs()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(ValueError, match=r"Outputs without a loss: \['task_3'\]"):
        model.fit(x, y, verbose=0)


def test_labels_of_another_width_are_an_error_for_keras_losses():
    x, y = data(n=16)
    wide = {"task_1": np.repeat(y["task_1"], 3, axis=1), "task_2": y["task_2"]}
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(
        ValueError, match=r"task 'task_1' to have a last dimension of 1, .*shape \(None, 3\)"
    ):
        model.fit(x, wide, verbose=0)

    # A custom loss may read wider labels (here: a per-example weight column).
    def weighted_mse(y_true, y_pred):
        return y_true[:, 1] * keras.ops.square(y_pred[:, 0] - y_true[:, 0])

    model.compile(optimizer="sgd", loss={"task_1": weighted_mse, "task_2": "mse"})
    model.fit(x, wide, verbose=0)


def test_sparse_labels_of_width_one_fit_wider_predictions():
    # Sparse class labels (batch, 1) against (batch, 3) probabilities are what
    # sparse_categorical_crossentropy reads: the width check lets them through,
    # and the loss is Keras's.
    x, _ = data(n=16)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(4,), name="trunk")(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs=inputs,
        outputs={
            "task_1": keras.layers.Dense(3, activation="softmax", name="task_1")(h),
            "task_2": keras.layers.Dense(1, name="task_2")(h),
        },
    )
    loss = {"task_1": "sparse_categorical_crossentropy", "task_2": "mse"}
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    y = {"task_1": (np.arange(16) % 3).reshape(16, 1), "task_2": x[:, :1]}
    pred = model.predict(x, verbose=0)["task_1"]
    expected = -np.mean(np.log(pred[np.arange(16), y["task_1"][:, 0]]))
    result = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert result["task_1_loss"] == pytest.approx(expected, rel=1e-5)


def test_a_balancer_built_for_other_tasks_is_refused():
    balancer = keras_mtl.balancers.get("uw")
    balancer.build(3)
    with pytest.raises(
        ValueError, match=r"built for 3 tasks, the model has 2: \['task_1', 'task_2'\]"
    ):
        build().compile(optimizer="sgd", loss=LOSS, balancer=balancer)


def test_a_sample_weight_dict_may_leave_out_tasks():
    x, y = data(n=16)
    weight = np.array([0, 1] * 8, "float32")
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    full = {"task_1": weight, "task_2": np.ones(16, "float32")}
    expected = model.evaluate(x, y, sample_weight=full, verbose=0, return_dict=True)
    partial = model.evaluate(x, y, sample_weight={"task_1": weight}, verbose=0, return_dict=True)
    assert partial == pytest.approx(expected, rel=1e-6)
    model.fit(x, y, sample_weight={"task_1": weight}, verbose=0)
    with pytest.raises(ValueError, match=r"keys of `sample_weight`.*unknown: \['task_3'\]"):
        model.fit(x, y, sample_weight={"task_1": weight, "task_3": weight}, verbose=0)


def test_class_weight_points_to_sample_weight():
    x, y = data(n=16)
    model = build()
    model.compile(optimizer="sgd", loss=LOSS)
    with pytest.raises(
        ValueError,
        match=r"`class_weight` is not supported.*sample_weight=\{task: weights\}.*"
        r"Received: class_weight=\{0: 1.0, 1: 2.0\}",
    ):
        model.fit(x, y, class_weight={0: 1.0, 1: 2.0}, verbose=0)
