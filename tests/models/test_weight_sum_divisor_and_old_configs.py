"""Regression tests for the review of the day's changes (balancers, model, engine)."""

import keras
import numpy as np
import pytest

from tests.models.helpers import TASKS, build, data


def _weighted_mean_loss():
    return keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")


def test_mean_with_sample_weight_divides_by_weight_sums_below_one():
    # Weights summing to less than 1 per batch (8 x 0.05 = 0.4) must divide
    # the weighted sum as they are, as Keras does: a floor of 1 on the
    # divisor (right for label counts) shrank the loss and its gradient.
    x, y = data(n=16)
    sw = {t: np.full((16,), 0.05, "float32") for t in TASKS}
    ours = build()
    ours.compile(optimizer="sgd", loss={t: _weighted_mean_loss() for t in TASKS}, balancer="ew")
    plain = build(model_cls=keras.Model)
    plain.compile(optimizer="sgd", loss={t: _weighted_mean_loss() for t in TASKS})
    kwargs = {"sample_weight": sw, "batch_size": 8, "return_dict": True, "verbose": 0}
    got = ours.evaluate(x, y, **kwargs)
    want = plain.evaluate(x, y, **kwargs)
    for key in ("loss", "task_1_loss", "task_2_loss"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
    first = {t: v[:8] for t, v in sw.items()}
    got = ours.train_on_batch(x[:8], {t: v[:8] for t, v in y.items()}, first, return_dict=True)
    want = plain.train_on_batch(x[:8], {t: v[:8] for t, v in y.items()}, first, return_dict=True)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    for a, b in zip(ours.trainable_weights, plain.trainable_weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_log_loss_refusal_tells_how_to_load_an_older_saved_model():
    # A `.keras` file saved before LogLoss refused learned loss scales fails
    # `load_model` with this error; it must name the way out.
    import pytest

    import keras_mtl

    config = {
        "class_name": "LogLoss",
        "config": {"inner": keras_mtl.balancers.serialize(keras_mtl.balancers.get("uw"))},
        "registered_name": "keras_mtl>LogLoss",
        "module": "keras_mtl.balancers.log_loss",
    }
    with pytest.raises(ValueError, match=r"compile=False") as info:
        keras_mtl.balancers.deserialize(config)
    assert "UncertaintyWeighting" in str(info.value)


@pytest.mark.parametrize("balancer", ["cagrad", "aligned_mtl"])
def test_overflowing_mixed_precision_steps_keep_the_logs_finite(balancer):
    # The loss scale optimizer skips steps whose scaled gradients overflow;
    # CAGrad and Aligned-MTL give NaN weights there, which made the epoch's
    # `loss`, the `<task>_weight` logs and `evaluate` NaN.
    x, y = data(n=64)
    y = {k: v * 30.0 for k, v in y.items()}
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build()
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer="sgd", loss={"task_1": "mse", "task_2": "mse"}, balancer=balancer)
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    assert float(model.optimizer.dynamic_scale.numpy()) < 2.0**15  # steps did overflow
    for key in ("loss", "task_1_weight", "task_2_weight"):
        assert np.all(np.isfinite(history[key])), (key, history[key])
    assert np.all(np.isfinite(np.array(model._last_task_weights)))
    assert np.isfinite(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])
