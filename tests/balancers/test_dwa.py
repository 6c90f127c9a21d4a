import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import DWA


def _reference(epoch_losses, temperature=2.0):
    """NumPy DWA: weights of every step, epochs given as lists of loss vectors."""
    means, out = [], []
    for epoch in epoch_losses:
        if len(means) >= 2:
            r = means[-1] / means[-2]
            e = np.exp(r / temperature)
            w = len(r) * e / e.sum()
        else:
            w = np.ones(len(epoch[0]))
        out.extend([w] * len(epoch))
        means.append(np.mean(epoch, axis=0))
    return np.array(out)


def _run_epochs(b, epochs):
    """The weights of every step, calling `on_epoch_begin` as `fit` does."""
    b.build(len(epochs[0][0]))
    got = []
    for e, epoch in enumerate(epochs):
        b.on_epoch_begin(e)
        got.extend(np.asarray(b.aggregate(None, losses).weights) for losses in epoch)
    return got


def _epochs(seed=0, num_epochs=4, steps=3, tasks=3):
    rng = np.random.default_rng(seed)
    return [list(rng.uniform(0.1, 2.0, size=(steps, tasks))) for _ in range(num_epochs)]


def test_weights_across_epoch_boundaries_with_on_epoch_begin():
    epochs = _epochs()
    b = DWA()
    got = _run_epochs(b, epochs)
    np.testing.assert_allclose(np.array(got), _reference(epochs), rtol=1e-5)
    assert float(b.epoch) == 3.0 and float(b.completed_epochs) == 3.0
    # Epochs 0 and 1 have equal weights; epoch 2 does not.
    assert not np.allclose(got[6], 1.0)


def test_hand_computed_third_epoch():
    b = DWA(temperature=2.0)
    b.build(2)
    for e, losses in enumerate(([2.0, 1.0], [1.0, 1.0])):
        b.on_epoch_begin(e)
        np.testing.assert_array_equal(b.aggregate(None, losses).weights, [1.0, 1.0])
    b.on_epoch_begin(2)
    # r = [1/2, 1/1]; w = 2 exp(r/2) / sum
    w = 2 * np.exp([0.25, 0.5]) / np.exp([0.25, 0.5]).sum()
    np.testing.assert_allclose(b.aggregate(None, [5.0, 5.0]).weights, w, rtol=1e-6)


def test_epochs_of_different_lengths_use_mean_losses():
    # r_t = mean loss of epoch k-1 / mean loss of epoch k-2 (not sums): the
    # epochs here have 1, 3 and 2 steps.
    rng = np.random.default_rng(5)
    epochs = [list(rng.uniform(0.1, 2.0, size=(n, 3))) for n in (1, 3, 2, 2)]
    b = DWA()
    got = _run_epochs(b, epochs)
    np.testing.assert_allclose(np.array(got), _reference(epochs), rtol=1e-5)
    r = np.mean(epochs[1], axis=0) / np.mean(epochs[0], axis=0)
    np.testing.assert_allclose(got[4], 3 * np.exp(r / 2) / np.exp(r / 2).sum(), rtol=1e-5)


def test_steps_per_epoch_matches_epoch_hooks_and_runs_in_a_tf_function():
    epochs = _epochs(seed=1)
    b = DWA(steps_per_epoch=3)
    b.build(3)
    step = tf.function(lambda losses: b.aggregate(None, losses).weights)
    got = [step(tf.constant(losses, tf.float32)).numpy() for epoch in epochs for losses in epoch]
    np.testing.assert_allclose(np.array(got), _reference(epochs), rtol=1e-5)


def test_repeated_epoch_index_and_empty_epochs():
    b = DWA()
    b.build(2)
    b.on_epoch_begin(0)
    b.on_epoch_begin(0)  # no step yet: nothing to close
    assert float(b.completed_epochs) == 0.0
    b.aggregate(None, [1.0, 1.0])
    b.on_epoch_end(0)
    b.on_epoch_begin(0)  # a second `fit` starting again at epoch 0 closes the first
    assert float(b.completed_epochs) == 1.0
    np.testing.assert_array_equal(np.array(b.last_mean_losses), [1.0, 1.0])


def test_standalone_without_epochs_keeps_equal_weights():
    b = DWA()
    for losses in _epochs()[0] * 5:
        np.testing.assert_array_equal(b.aggregate(None, losses).weights, [1.0, 1.0, 1.0])


def test_state_restore_continues_the_trajectory():
    epochs = _epochs(seed=2, num_epochs=5)
    b = DWA(steps_per_epoch=3)
    flat = [losses for epoch in epochs for losses in epoch]
    for losses in flat[:7]:  # stop in the middle of the third epoch
        b.aggregate(None, losses)
    copy = balancers.deserialize(balancers.serialize(b))
    if not copy.built:
        copy.build(3)
    for v, w in zip(copy.variables, b.variables, strict=True):
        v.assign(w)
    for losses in flat[7:]:
        np.testing.assert_array_equal(
            copy.aggregate(None, losses).weights, b.aggregate(None, losses).weights
        )


def test_zero_losses_give_finite_weights():
    b = DWA(steps_per_epoch=1)
    for losses in ([0.0, 1e6], [1e-8, 0.0], [0.0, 1.0], [1e6, 1e-8]):
        w = np.asarray(b.aggregate(None, losses).weights)
        assert np.all(np.isfinite(w)) and abs(w.sum() - 2.0) < 1e-5


def test_epoch_means_leave_out_steps_without_labels():
    # Task 2 is labelled in 1 of 2 steps of epoch 0 (loss 1.0), in both of
    # epoch 1 (loss 0.9): its ratio is 0.9, not 0.9 / 0.5 (the mean diluted
    # by the zero loss of the unlabelled step).
    b = DWA(steps_per_epoch=2)
    for losses in ([1.0, 1.0], [1.0, 0.0], [1.0, 0.9], [1.0, 0.9]):
        b.aggregate(None, losses)
    r = np.array([1.0, 0.9])
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    np.testing.assert_allclose(b.aggregate(None, [1.0, 0.9]).weights, expected, rtol=1e-5)


def test_an_epoch_without_a_tasks_labels_keeps_its_mean():
    # Task 2 has no labels in epoch 1: its mean stays that of epoch 0, ratio
    # 1 (a zero mean gave it ratio 0, and all the weight an epoch later).
    b = DWA(steps_per_epoch=1)
    for losses in ([2.0, 1.0], [1.0, 0.0]):
        b.aggregate(None, losses)
    r = np.array([0.5, 1.0])
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    np.testing.assert_allclose(b.aggregate(None, [1.0, 1.0]).weights, expected, rtol=1e-5)
    b.aggregate(None, [1.0, 1.0])  # epoch 3: task 2's ratio is 1.0 / 1.0 again
    np.testing.assert_allclose(b.aggregate(None, [1.0, 1.0]).weights, [1.0, 1.0], rtol=1e-5)


def test_config_and_validation():
    b = DWA(temperature=1.5, steps_per_epoch=10)
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, DWA) and again.get_config() == b.get_config()
    with pytest.raises(ValueError, match="Received: temperature=0"):
        DWA(temperature=0)
    with pytest.raises(ValueError, match="Received: steps_per_epoch=2.5"):
        DWA(steps_per_epoch=2.5)


def test_small_losses_keep_their_ratios():
    # r depends only on ratios of mean losses: losses of order 1e-4 (a task
    # near convergence) give the same weights as the same losses times 1e4.
    # The guard against a zero previous mean must be far below such losses.
    epochs = _epochs(seed=3)
    small = [[1e-4 * losses for losses in epoch] for epoch in epochs]
    got = _run_epochs(DWA(), small)
    np.testing.assert_allclose(np.array(got), _reference(epochs), rtol=1e-5)
