"""One-process checks from the review of tf.distribute support: the paths that today's
distribution changes share with one device (loss scaling with sparse gradients, the
`SharedRepresentation` recording, the helpers of the several-replica paths). The checks
that need two replicas run in a subprocess (test_distribution.py, mirrored_check.py)."""

import copy
import pickle
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.gradients import engine
from tests.models.helpers import build, data
from tests.models.mirrored_check import embedding_model

LOSS = {"task_1": "mse", "task_2": "mse"}


# ------------------------------------------- loss scaling with sparse gradients
def embedding_batch():
    """A batch whose first example's label overflows the float16 gradient at the loss scale
    2**15; each id it looks up is looked up again by a later example."""
    ids = np.array([[1, 2, 3], [1, 2, 3], [4, 5, 6], [7, 8, 9]] * 2, "int32")
    rng = np.random.default_rng(0)
    y = {t: rng.normal(size=(8, 1)).astype("float32") for t in LOSS}
    y["task_1"][0] = 100.0
    return ids, y


@pytest.mark.parametrize("balancer", ["ew", "uw"])
def test_an_overflow_in_a_sparse_gradient_is_skipped_by_the_loss_scale_optimizer(balancer):
    # Keras's loss scale optimizer tests an IndexedSlices gradient after a scatter that keeps
    # only the last value of a repeated index, so it misses an overflow in rows that the batch
    # looks up again and writes inf into the table. The engine tests the gradients itself and
    # hands the optimizer a non-finite dense gradient (UW's log-variances) or sparse one (EW)
    # that it cannot miss, as it already does with several replicas.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = embedding_model()
        model.compile(
            optimizer=keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(0.1), initial_scale=2.0**15
            ),
            loss=LOSS,
            balancer=balancer,
        )
    finally:
        keras.config.set_dtype_policy("float32")
    ids, y = embedding_batch()
    before = keras.ops.convert_to_numpy(model.get_layer("table").embeddings)
    model.train_on_batch(ids, y)
    after = keras.ops.convert_to_numpy(model.get_layer("table").embeddings)
    assert np.all(np.isfinite(after))
    np.testing.assert_array_equal(after, before)  # the step was skipped
    assert int(model.optimizer.iterations) == 0
    assert float(model.optimizer.dynamic_scale) == 2.0**14  # and the scale lowered
    # The next step, at the lower scale, is applied.
    y["task_1"][0] = 1.0
    model.train_on_batch(ids, y)
    assert int(model.optimizer.iterations) == 1


def test_poison_reaches_the_optimizer_through_a_nonempty_gradient():
    # `_poison` adds NaN to the smallest gradient: one without elements would carry nothing.
    keep = tf.constant(False)
    grads = engine._poison([tf.zeros((0, 3)), tf.ones((2,)), tf.ones((5,))], keep)
    assert [int(tf.size(g)) for g in grads] == [0, 2, 5]
    assert np.isnan(grads[1].numpy()).all() and np.isfinite(grads[2].numpy()).all()
    sparse = tf.IndexedSlices(tf.ones((2, 3)), tf.constant([1, 1]), tf.constant([4, 3]))
    (poisoned,) = engine._poison([sparse], keep)
    # Every value: a check that keeps one value per index still sees it.
    assert isinstance(poisoned, tf.IndexedSlices) and np.isnan(poisoned.values.numpy()).all()
    kept = engine._poison([tf.zeros((0,)), tf.ones((2,))], tf.constant(True))
    np.testing.assert_array_equal(kept[1].numpy(), [1.0, 1.0])


# ------------------------------------------------- the SharedRepresentation layer
def representation_model():
    model = build(representation=True)
    model.compile(optimizer="adam", loss=LOSS, balancer="mgda_ub", gradient_mode="representation")
    return model


def test_the_representation_layer_keeps_no_tensor_of_a_step():
    # The engine reads the recorded tensor once; kept, it would hold the traced step's graph
    # (or a stale tensor that a later step could read in place of its own).
    model = representation_model()
    x, y = data(n=16)
    model.train_on_batch(x, y)
    assert model.get_layer("rep")._recorded is None
    assert not model.get_layer("rep")._recording


class SkipsTheRepresentation(keras_mtl.MultiTaskModel):
    """Has a SharedRepresentation layer that its `call` never applies."""

    def __init__(self):
        super().__init__()
        self.trunk = keras.layers.Dense(8, name="trunk")
        self.rep = keras_mtl.layers.SharedRepresentation(name="rep")
        self.heads = [keras.layers.Dense(1, name=t) for t in LOSS]

    def call(self, x):
        h = self.trunk(x)
        return {t: head(h) for t, head in zip(LOSS, self.heads, strict=True)}


# Keras warns, as for any model, that the layer its `call` never applies stays unbuilt.
@pytest.mark.filterwarnings("ignore:`build\\(\\)` was called on layer:UserWarning")
def test_a_representation_layer_that_does_not_run_is_named():
    model = SkipsTheRepresentation()
    model.compile(optimizer="sgd", loss=LOSS, balancer="mgda_ub", gradient_mode="representation")
    x, y = data(n=8)
    with pytest.raises(ValueError, match="SharedRepresentation layer 'rep' did not run"):
        model.train_on_batch(x, y)


def test_a_trained_representation_model_copies_saves_and_exports(tmp_path):
    # The layer's per-thread record (a threading.local) must not reach its copies or files.
    model = representation_model()
    x, y = data(n=32)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)

    def same(other):
        got = other.predict(x, verbose=0)
        for task in LOSS:
            np.testing.assert_allclose(got[task], expected[task], rtol=1e-6)

    same(pickle.loads(pickle.dumps(model)))
    copied = copy.deepcopy(model)
    same(copied)
    copied.fit(x, y, batch_size=16, epochs=1, verbose=0)  # the copy records on its own
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    same(clone)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    same(loaded)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.export(tmp_path / "served", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))  # kept: `serve` reads its variables
    outputs = served.serve(x)
    np.testing.assert_allclose(outputs["task_1"].numpy(), expected["task_1"], rtol=1e-6)


def test_the_record_of_one_thread_is_not_read_in_another():
    layer = keras_mtl.layers.SharedRepresentation()
    seen = {}

    def other():
        seen["recording"] = layer._recording
        layer(tf.ones((2, 3)))
        seen["recorded"] = layer._recorded

    layer._recording = True
    try:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert seen == {"recording": False, "recorded": None}
        assert layer._recorded is None
        out = layer(tf.ones((2, 3)))
        assert layer._recorded is out
    finally:
        layer._recording = False
        layer._recorded = None
