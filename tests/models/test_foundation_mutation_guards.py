"""Guards for the foundation's contract that a mutation audit found untested or weakly tested.

Each test pins a behaviour that a plausible bug changed while the other tests still passed
(or passed by a hair):

- a gradient-scale error in the `"ew"` step moved the weights by under 3e-5 after an epoch of
  Adam, which normalises the gradient's scale away; SGD with momentum shows it;
- a loss-only balancer compiled with an explicit `gradient_mode` took one backward pass per
  task (the same numbers, T times the cost);
- `gradient_mode="auto"` could pick representation mode for a model without a
  `SharedRepresentation` layer;
- nothing checked what the balancer sees for a task without labels in the batch;
- nothing checked that a step refused for a non-finite loss left the weights as they were.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl import balancers
from keras_mtl.gradients import GradientEngine
from tests.models.helpers import TASKS, Capture, NormalizedEMA, brute_force_grads, build, data

LOSS = {"task_1": "mse", "task_2": "mse"}


def test_ew_takes_the_plain_keras_steps_under_sgd_with_a_partial_last_batch():
    # 40 examples in batches of 16, 16 and 8, two epochs: SGD with momentum keeps the
    # gradient's scale (Adam divides it out), and the short batch checks the per-batch mean.
    x, y = data(n=40)
    plain = build(model_cls=keras.Model)
    ours = build()
    ours.set_weights(plain.get_weights())
    initial = [np.array(v) for v in plain.trainable_variables]
    plain.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    ours.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS, balancer="ew")
    expected = plain.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    got = ours.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    moved = max(
        float(np.max(np.abs(np.array(v) - i)))
        for v, i in zip(plain.trainable_variables, initial, strict=True)
    )
    assert moved > 0.05  # the comparison below is not between two untrained models
    for a, b in zip(plain.trainable_variables, ours.trainable_variables, strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
    assert sorted(got) == ["loss", "task_1_loss", "task_1_weight", "task_2_loss", "task_2_weight"]
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
    # Keras logs each output's loss as the plain mean of the batch means (the short batch
    # counts as much as a full one); here it is the mean over examples, as `loss` is in both,
    # so that the task losses add up to `loss` (weights 1, no regularisation).
    np.testing.assert_allclose(
        np.add(got["task_1_loss"], got["task_2_loss"]), got["loss"], rtol=1e-5
    )
    assert got["task_1_weight"] == got["task_2_weight"] == [1.0, 1.0]


@pytest.fixture
def tape_calls(monkeypatch):
    """`(method, ids of the sources)` of each `tf.GradientTape.gradient` and `.jacobian` call
    (eager steps only)."""
    calls = []
    for method in ("gradient", "jacobian"):
        original = getattr(tf.GradientTape, method)

        def recorded(self, target, sources, *args, _original=original, _method=method, **kwargs):
            calls.append((_method, {id(s) for s in tf.nest.flatten(sources)}))
            return _original(self, target, sources, *args, **kwargs)

        monkeypatch.setattr(tf.GradientTape, method, recorded)
    return calls


def _backward_passes(calls, model):
    """The recorded calls that differentiate with respect to the model's own variables (a
    balancer's auxiliary loss, differentiated for its variables alone, is not one)."""
    own = {id(v) for v in model.balancer.trainable_variables}
    model_ids = {id(v) for v in model.trainable_variables if id(v) not in own}
    return [method for method, ids in calls if ids & model_ids]


@pytest.mark.parametrize("mode", ["auto", "loop", "jacobian", "representation"])
def test_loss_only_balancers_take_one_backward_pass_whatever_the_gradient_mode(mode, tape_calls):
    x, y = data(n=16)
    loss_only = ["ew", keras_mtl.balancers.StaticWeighting({"task_1": 0.3, "task_2": 0.7}), "uw"]
    for balancer in loss_only:
        model = build(representation=True)
        model.compile(
            optimizer="sgd", loss=LOSS, balancer=balancer, gradient_mode=mode, run_eagerly=True
        )
        tape_calls.clear()
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        assert _backward_passes(tape_calls, model) == ["gradient"], balancer
    # The same count sees a gradient method's per-task passes (T = 2 at least).
    model = build(representation=True)
    model.compile(
        optimizer="sgd", loss=LOSS, balancer=Capture(), gradient_mode="loop", run_eagerly=True
    )
    tape_calls.clear()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert len(_backward_passes(tape_calls, model)) >= len(TASKS)


def test_auto_mode_picks_a_valid_mode_for_every_registered_balancer():
    plain, marked = build(), build(representation=True)
    for alias in balancers.available():
        for model in (plain, marked):
            balancer = balancers.get(alias)
            model.compile(optimizer="sgd", loss=LOSS, balancer=balancer)
            mode = GradientEngine("auto").resolve_mode(model)
            if not balancer.requires_jacobian:
                assert mode == "weighted", alias
            elif balancer.jacobian_scope == "last_shared_layer":
                assert mode == "scoped", alias
            elif model is plain:
                assert mode in ("loop", "jacobian"), alias
            else:
                assert mode in ("loop", "jacobian", "representation"), alias
    # MGDA-UB prefers representation mode: taken where the model marks the tensor, and
    # without the mark "auto" still trains.
    x, y = data(n=32)
    for model, expected in ((marked, "representation"), (plain, "loop")):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, balancer="mgda_ub")
        assert GradientEngine("auto").resolve_mode(model) == expected
        before = [np.array(v) for v in model.trainable_variables]
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][0])
        assert all(np.all(np.isfinite(np.array(v))) for v in model.trainable_variables)
        assert not np.allclose(before[0], np.array(model.trainable_variables[0]))


@pytest.mark.parametrize("marking", ["nan_labels", "zero_sample_weights"])
@pytest.mark.parametrize("mode", ["loop", "jacobian", "representation"])
def test_a_task_without_labels_in_the_batch_gives_the_balancer_zeros_and_keeps_its_tower(
    mode, marking
):
    x, y = data(n=16)
    model = build(representation=True)
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=LOSS,
        balancer=Capture(),  # weights [0.3, 0.7]; records J and the losses
        gradient_mode=mode,
        run_eagerly=True,
    )
    kwargs = {}
    labels = dict(y)
    if marking == "nan_labels":
        labels["task_2"] = np.full_like(y["task_2"], np.nan)
    else:
        kwargs["sample_weight"] = {"task_2": np.zeros(16, "float32")}
    tower = [i for i, v in enumerate(model.trainable_variables) if v.path.startswith("task_2")]
    assert len(tower) == 4
    before = [np.array(v) for v in model.trainable_variables]
    # Only task_1 contributes, with its weight 0.3.
    expected = brute_force_grads(model, x, y, [0.3, 0.0])
    Capture.last = None
    history = model.fit(x, labels, batch_size=16, shuffle=False, verbose=0, **kwargs).history
    jac, losses = Capture.last
    assert np.all(np.isfinite(jac)) and np.all(np.isfinite(losses))
    assert losses[1] == 0.0 and losses[0] > 0.1
    np.testing.assert_array_equal(jac[1], np.zeros_like(jac[1]))
    assert np.max(np.abs(jac[0])) > 1e-3
    assert history["task_2_loss"] == [0.0]
    assert history["task_1_loss"] == [pytest.approx(float(losses[0]), rel=1e-6)]
    for i, (b, v, g) in enumerate(zip(before, model.trainable_variables, expected, strict=True)):
        if i in tower:
            np.testing.assert_array_equal(np.array(v), b, err_msg=v.path)
        else:
            np.testing.assert_allclose(b - np.array(v), g, atol=1e-5, err_msg=v.path)


@pytest.mark.parametrize(
    ("balancer", "mode"),
    [("ew", "auto"), ("ema", "loop"), ("ema", "jacobian"), ("ema", "representation")],
)
def test_a_step_refused_for_a_nonfinite_loss_changes_nothing(balancer, mode):
    x, y = data(n=16)
    y_bad = {"task_1": y["task_1"], "task_2": y["task_2"].copy()}
    y_bad["task_2"][3] = np.inf
    model = build(representation=True)
    model.compile(
        optimizer=keras.optimizers.Adam(0.1),
        loss=LOSS,
        balancer=NormalizedEMA() if balancer == "ema" else balancer,
        gradient_mode=mode,
    )
    state = model.weights  # the model's, the balancer's and the model's own state
    assert len(state) > len(model.trainable_variables)
    before = [np.array(v) for v in state]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Non-finite task loss"):
        model.fit(x, y_bad, batch_size=16, epochs=1, verbose=0)
    for b, v in zip(before, state, strict=True):
        np.testing.assert_array_equal(np.array(v), b, err_msg=v.path)
    assert int(model.optimizer.iterations) == 0
