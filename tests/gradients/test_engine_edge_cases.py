"""Gradient engine edge cases: the mode that
`gradient_mode="auto"` takes from a balancer's preference, refusals of models the engine
cannot take per-task gradients of, and the task-specific gradients of the loop and
representation modes (sparse ones, unreached variables, regularisation-only ones), each
checked against per-task gradients taken by hand."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_mtl
from keras_mtl.balancers import Balancer, BalanceResult
from keras_mtl.gradients import engine
from tests.models.helpers import TASKS, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}
WEIGHTS = (0.25, 1.5)
RATE = 0.5


class FixedJacobianWeights(Balancer):
    """A gradient method with fixed, unequal weights: direction `w^T J`, weights `w`. Unlike
    StaticWeighting (a loss-only method, one weighted backward pass), it makes the engine
    take per-task gradients."""

    requires_jacobian = True

    def compute(self, jacobian, losses, representation=None):
        weights = ops.convert_to_tensor(WEIGHTS, dtype="float32")
        return BalanceResult(ops.matmul(weights[None], jacobian)[0], weights)


def one_sgd_step(model, x, y, mode, applied=None):
    """Compiles `model` with SGD, the fixed weights and `mode`, and applies one step on
    the batch; returns the trainable variables before and after. `applied`, a dict, gets
    `{variable path: gradient}` as the engine hands them to the optimizer."""
    optimizer = keras.optimizers.SGD(RATE)
    if applied is not None:
        apply = optimizer.apply

        def spy(grads, variables):
            applied.update({v.path: g for g, v in zip(grads, variables, strict=True)})
            return apply(grads, variables)

        optimizer.apply = spy
    model.compile(
        optimizer=optimizer, loss=LOSS, balancer=FixedJacobianWeights(), gradient_mode=mode
    )
    before = [ops.convert_to_numpy(v) for v in model.trainable_variables]
    model.train_on_batch(x, y)
    return before, [ops.convert_to_numpy(v) for v in model.trainable_variables]


def hand_step(model, x, y, before):
    """The SGD step on `sum_t w_t L_t + sum(model.losses)` from one tape per task (and one
    for the penalties), densified, at the weights `before`; also the raw per-task
    gradients."""
    for v, value in zip(model.trainable_variables, before, strict=True):
        v.assign(value)
    variables = model.trainable_variables
    per_task = []
    for name in TASKS:
        with tf.GradientTape() as tape:
            pred = model(x, training=True)[name]
            loss = tf.reduce_mean(tf.square(pred - y[name]))
        per_task.append(tape.gradient(loss, variables))
    with tf.GradientTape() as tape:
        model(x, training=True)
        penalty = sum(model.losses) if model.losses else tf.constant(0.0)
    regularization = tape.gradient(penalty, variables)
    expected = []
    for i, value in enumerate(before):
        total = np.zeros(value.shape, "float64")
        for w, grads in zip(WEIGHTS, per_task, strict=True):
            if grads[i] is not None:
                total += w * tf.convert_to_tensor(grads[i]).numpy()
        if regularization[i] is not None:
            total += tf.convert_to_tensor(regularization[i]).numpy()
        expected.append(value - RATE * total)
    return expected, per_task


def assert_same_step(model, after, expected):
    for v, got, want in zip(model.trainable_variables, after, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=v.path)


# ------------------------------------------------ gradient_mode="auto" and preferences
@pytest.mark.parametrize("preferred", ["loop", "jacobian"])
def test_auto_mode_takes_the_loop_or_jacobian_mode_that_the_balancer_prefers(
    preferred, monkeypatch
):
    # Also with a SharedRepresentation layer in the model: the preference decides.
    class Prefers(FixedJacobianWeights):
        preferred_gradient_mode = preferred

    ran = []
    for name in ("_loop", "_jacobian", "_representation"):
        original = getattr(engine.GradientEngine, name)

        def spy(self, step, *args, _name=name, _original=original):
            ran.append(_name)
            return _original(self, step, *args)

        monkeypatch.setattr(engine.GradientEngine, name, spy)
    x, y = data(n=8)
    model = build(representation=True)
    model.compile(optimizer="sgd", loss=LOSS, balancer=Prefers())
    assert model._engine.resolve_mode(model) == preferred
    model.train_on_batch(x, y)
    assert ran == [f"_{preferred}"]


# ----------------------------------------------------------------- refused models
def model_with_dropout_trunk():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
    h = keras.layers.Dropout(0.0, name="drop")(h)
    return keras_mtl.MultiTaskModel(
        inputs=inputs, outputs={t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    )


def test_shared_layers_naming_a_layer_without_trainable_variables_is_refused():
    x, y = data(n=8)
    model = model_with_dropout_trunk()
    # The trunk alone would do; the dropout layer adds nothing that a gradient could reach.
    model.compile(
        optimizer="sgd",
        loss=LOSS,
        balancer=FixedJacobianWeights(),
        shared_layers=[model.get_layer("trunk"), "drop"],
    )
    with pytest.raises(
        ValueError,
        match=r"Expected every layer in `shared_layers` to have trainable variables; layer "
        r"'drop' has none\. Received: shared_layers=\['trunk', 'drop'\]",
    ):
        model.fit(x, y, batch_size=8, verbose=0)

    # A frozen layer has variables, but none that trains: named as frozen.
    model = model_with_dropout_trunk()
    model.get_layer("trunk").trainable = False
    model.compile(
        optimizer="sgd", loss=LOSS, balancer=FixedJacobianWeights(), shared_layers=["trunk"]
    )
    with pytest.raises(
        ValueError,
        match=r"layer 'trunk' has none \(it is frozen: trainable=False\)\. "
        r"Received: shared_layers=\['trunk'\]",
    ):
        model.fit(x, y, batch_size=8, verbose=0)


def model_with_representation_of_the_inputs():
    """The SharedRepresentation layer marks the inputs: no trainable variable before it."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedRepresentation(name="rep")(inputs)
    outputs = {
        t: keras.layers.Dense(1, name=t)(keras.layers.Dense(4, name=f"{t}_hidden")(h))
        for t in TASKS
    }
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


def test_representation_mode_without_trainable_variables_before_the_representation():
    x, y = data(n=8)
    model = model_with_representation_of_the_inputs()
    model.compile(optimizer="sgd", loss=LOSS, balancer="mgda_ub", gradient_mode="representation")
    with pytest.raises(
        ValueError,
        match=r"Representation gradients need trainable variables before the "
        r"SharedRepresentation layer 'rep'.*none of the model's trainable variables feeds it\. "
        r"Expected .*Received: gradient_mode='representation'$",
    ):
        model.train_on_batch(x, y)

    # "auto" takes representation gradients for MGDA-UB: a frozen trunk is named.
    model = build(representation=True)
    model.get_layer("trunk").trainable = False
    model.compile(optimizer="sgd", loss=LOSS, balancer="mgda_ub")
    with pytest.raises(
        ValueError,
        match=r"SharedRepresentation layer 'rep'.*frozen layers \(trainable=False\).*\['trunk'\].*"
        r"Received: gradient_mode='auto', which takes representation gradients for `MGDAUB`",
    ):
        model.train_on_batch(x, y)


def model_with_two_representations():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
    outputs = {
        t: keras.layers.Dense(1, name=t)(keras_mtl.layers.SharedRepresentation(name=f"rep_{t}")(h))
        for t in TASKS
    }
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


@pytest.mark.parametrize("mode", ["representation", "auto"])
def test_two_shared_representation_layers_are_refused_for_representation_gradients(mode):
    x, y = data(n=8)
    model = model_with_two_representations()
    model.compile(optimizer="sgd", loss=LOSS, balancer="mgda_ub", gradient_mode=mode)
    with pytest.raises(
        ValueError,
        match=r"Representation gradients \(gradient_mode='representation', or 'auto' for a "
        r"balancer that prefers them\) need exactly one SharedRepresentation layer\. "
        r"Received: a model with 2: \['rep_task_1', 'rep_task_2'\]",
    ):
        model.fit(x, y, batch_size=8, verbose=0)
    # The loop mode does not read the layers.
    model.compile(optimizer="sgd", loss=LOSS, balancer="mgda_ub", gradient_mode="loop")
    model.fit(x, y, batch_size=8, verbose=0)
    assert model.shared_variable_paths == ["trunk/dense_0/kernel", "trunk/dense_0/bias"]


def test_layer_path_refuses_a_layer_outside_the_model():
    # compile only asks for paths of layers it found in the model; a direct caller may not.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras_mtl.layers.SharedBottom(units=(4,), name="trunk")(inputs))
    for stranger in (keras.layers.Dense(2, name="stranger"), keras.layers.Dense(2, name="trunk")):
        with pytest.raises(
            ValueError,
            match=rf"Expected `layer` to be a layer of the model \(nested layers included\)\. "
            rf"Received: layer='{stranger.name}' \(a Dense\), which is not a layer of the model",
        ):
            engine.layer_path(model, stranger)


def test_poison_of_no_gradients_is_no_gradients():
    # Reached with several replicas and loss scaling when no variable gets a gradient
    # (every layer frozen); the optimizer then applies nothing.
    assert engine._poison([], tf.constant(False)) == []


# ------------------------------------------------------- task-specific gradients
def model_with_task_embedding():
    """task_1 reads an embedding of ids of its own (a sparse gradient), task_2 does not."""
    keras.utils.set_random_seed(0)
    features = keras.Input((6,), name="features")
    ids = keras.Input((3,), dtype="int32", name="ids")
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(features)
    h = keras_mtl.layers.SharedRepresentation(name="rep")(h)
    looked_up = keras.layers.Embedding(10, 4, name="task_1_embedding")(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(looked_up)
    outputs = {
        "task_1": keras.layers.Dense(1, name="task_1")(keras.layers.Concatenate()([h, pooled])),
        "task_2": keras.layers.Dense(1, name="task_2")(h),
    }
    return keras_mtl.MultiTaskModel(inputs={"features": features, "ids": ids}, outputs=outputs)


@pytest.mark.parametrize("mode", ["loop", "representation"])
def test_a_sparse_task_gradient_is_scaled_by_its_task_weight(mode):
    features, y = data(n=8)
    # Repeated ids: the rows of one id add up.
    x = {"features": features, "ids": np.array([[1, 2, 2], [3, 1, 4]] * 4, "int32")}
    model = model_with_task_embedding()
    applied = {}
    before, after = one_sgd_step(model, x, y, mode, applied)
    expected, per_task = hand_step(model, x, y, before)
    (table,) = [i for i, v in enumerate(model.trainable_variables) if "embedding" in v.path]
    assert isinstance(per_task[0][table], tf.IndexedSlices)
    assert per_task[1][table] is None
    assert_same_step(model, after, expected)
    # The step moved the table (by w_1 times task_1's gradient, checked above)...
    assert np.max(np.abs(after[table] - before[table])) > 1e-3
    # ... through a sparse update: a dense gradient of a large table costs its full size.
    assert isinstance(applied[model.trainable_variables[table].path], tf.IndexedSlices)


def model_with_a_stopped_branch(regularizer):
    """task_1 reads features through `stop_gradient`: no task reaches the `features`
    layer's variables; `regularizer` goes on its kernel."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs)
    h = keras_mtl.layers.SharedRepresentation(name="rep")(h)
    side = keras.layers.Dense(3, kernel_regularizer=regularizer, name="features")(inputs)
    side = ops.stop_gradient(side)
    outputs = {
        "task_1": keras.layers.Dense(1, name="task_1")(keras.layers.Concatenate()([h, side])),
        "task_2": keras.layers.Dense(1, name="task_2")(h),
    }
    return keras_mtl.MultiTaskModel(inputs=inputs, outputs=outputs)


@pytest.mark.parametrize("mode", ["loop", "representation"])
@pytest.mark.parametrize("penalty", [None, 0.1])
def test_a_variable_no_task_reaches_moves_by_its_penalty_alone(mode, penalty):
    x, y = data(n=8)
    regularizer = None if penalty is None else keras.regularizers.L2(penalty)
    model = model_with_a_stopped_branch(regularizer)
    before, after = one_sgd_step(model, x, y, mode)
    expected, per_task = hand_step(model, x, y, before)
    assert_same_step(model, after, expected)
    paths = [v.path for v in model.trainable_variables]
    kernel, bias = paths.index("features/kernel"), paths.index("features/bias")
    assert all(grads[kernel] is None and grads[bias] is None for grads in per_task)
    np.testing.assert_array_equal(after[bias], before[bias])
    if penalty is None:
        np.testing.assert_array_equal(after[kernel], before[kernel])
    else:
        # Only the L2 penalty's gradient, 2 * penalty * kernel.
        np.testing.assert_allclose(
            after[kernel], before[kernel] * (1 - RATE * 2 * penalty), rtol=1e-6, atol=1e-7
        )
