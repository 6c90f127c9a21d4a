import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import FAMO


class _ReferenceFAMO:
    """NumPy version of the paper's equations with torch.optim.Adam's update
    (L2 weight decay added to the gradient), logits updated from the losses of
    consecutive steps before the weights of the current step are formed."""

    def __init__(self, num_tasks, lr=0.025, weight_decay=1e-3, min_losses=None, eps=1e-8):
        self.xi = np.zeros(num_tasks)
        self.m = np.zeros(num_tasks)
        self.v = np.zeros(num_tasks)
        self.t = 0
        self.prev = None
        self.lr, self.wd, self.eps = lr, weight_decay, eps
        self.min = np.zeros(num_tasks) if min_losses is None else np.asarray(min_losses)

    def step(self, losses):
        losses = np.asarray(losses, float)
        if self.prev is not None:
            delta = np.log(self.prev - self.min + self.eps) - np.log(losses - self.min + self.eps)
            # No delta for a task at its bound (no labels) now or at the previous step.
            delta = np.where((self.prev > self.min) & (losses > self.min), delta, 0.0)
            z = np.exp(self.xi) / np.exp(self.xi).sum()
            # Vector-Jacobian product of the softmax: J_z^T delta.
            jac = np.diag(z) - np.outer(z, z)
            grad = jac.T @ delta + self.wd * self.xi
            self.t += 1
            self.m = 0.9 * self.m + 0.1 * grad
            self.v = 0.999 * self.v + 0.001 * grad**2
            m_hat = self.m / (1 - 0.9**self.t)
            v_hat = self.v / (1 - 0.999**self.t)
            self.xi = self.xi - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        self.prev = losses
        z = np.exp(self.xi) / np.exp(self.xi).sum()
        d = losses - self.min + self.eps
        c = np.sum(z / d)
        return z / (c * d)


def _loss_sequence(steps=12, tasks=3, seed=0):
    rng = np.random.default_rng(seed)
    # Tasks that fall at different rates, with noise.
    decay = np.exp(-np.arange(steps)[:, None] * np.array([0.3, 0.05, 0.15])[:tasks])
    return (rng.uniform(0.5, 3.0, tasks) * decay * rng.uniform(0.9, 1.1, (steps, tasks))).astype(
        "float32"
    )


@pytest.mark.parametrize("min_losses", [None, [0.01, 0.0, 0.02]])
def test_logit_updates_and_weights_match_numpy(min_losses):
    seq = _loss_sequence()
    assert np.all(seq.min(0) > [0.01, 0.0, 0.02])  # the bounds hold
    ref = _ReferenceFAMO(3, min_losses=min_losses)
    b = FAMO(min_losses=min_losses)
    for losses in seq:
        np.testing.assert_allclose(b.aggregate(None, losses).weights, ref.step(losses), rtol=2e-4)
        np.testing.assert_allclose(np.array(b.logits), ref.xi, rtol=2e-4, atol=1e-6)
    # The slowest-falling task (index 1) ends with the largest logit.
    assert np.argmax(np.array(b.logits)) == 1


def test_first_step_weights_are_normalised_inverse_losses():
    w = np.asarray(FAMO().aggregate(None, [1.0, 2.0, 4.0]).weights)
    np.testing.assert_allclose(w, np.array([4.0, 2.0, 1.0]) / 7.0, rtol=1e-5)


def test_graph_mode_matches_eager_and_state_restore_continues():
    seq = _loss_sequence(seed=1)
    eager = FAMO()
    expected = [np.asarray(eager.aggregate(None, losses).weights) for losses in seq]
    b = FAMO()
    b.build(3)
    step = tf.function(lambda losses: b.aggregate(None, losses).weights)
    for losses, w in zip(seq[:6], expected[:6], strict=True):
        np.testing.assert_allclose(step(tf.constant(losses)), w, rtol=1e-5)
    copy = balancers.deserialize(balancers.serialize(b))
    if not copy.built:
        copy.build(3)
    for v, w in zip(copy.variables, b.variables, strict=True):
        v.assign(w)
    for losses, w in zip(seq[6:], expected[6:], strict=True):
        np.testing.assert_allclose(copy.aggregate(None, losses).weights, w, rtol=1e-5)


def test_a_zero_loss_at_either_step_gives_no_logit_gradient():
    # delta_t = 0 for a task whose loss is 0 now or at the previous step; the
    # other task's delta = log 2 drives the first Adam step, which moves
    # every logit by the learning rate: xi = -0.025 sign(z (delta - z . delta)).
    for first, second in (([1.0, 1.0], [0.0, 0.5]), ([0.0, 1.0], [1.0, 0.5])):
        b = FAMO()
        b.aggregate(None, first)
        b.aggregate(None, second)
        np.testing.assert_allclose(np.array(b.logits), [0.025, -0.025], rtol=1e-4)


def test_zero_and_extreme_losses_are_finite():
    b = FAMO()
    for losses in ([0.0, 1.0], [1e-8, 1e6], [1e6, 0.0], [0.0, 0.0], [1.0, 1e-8]):
        w = np.asarray(b.aggregate(None, losses).weights)
        # The weights sum to 1 over the tasks that take part (none for [0, 0]).
        expected_sum = 0.0 if max(losses) == 0.0 else 1.0
        assert np.all(np.isfinite(w)) and abs(w.sum() - expected_sum) < 1e-5
    assert np.all(np.isfinite(np.array(b.logits)))


def _famo_weights_over_present_tasks(logits, losses, min_losses):
    """FAMO's w_t = z_t / (c D_t), c = sum_s z_s / D_s, taken over the tasks
    whose loss is above its bound; the others (no labels, loss 0) get 0."""
    z = np.exp(logits - logits.max())
    z = z / z.sum()
    present = losses > min_losses
    d = np.where(present, losses - min_losses, 1.0) + 1e-8
    ratio = np.where(present, z / d, 0.0)
    return ratio / ratio.sum() if ratio.sum() > 0 else ratio


@pytest.mark.parametrize("min_losses", [None, [0.0, 0.2, 0.0]])
def test_a_task_without_labels_takes_no_weight_from_the_others(min_losses):
    # A batch without a task's labels gives it loss 0 (at its bound); with
    # `D = 0 + 1e-8` it would take almost all the weight and scale the other
    # tasks' gradients by ~1e-8, so the step would train nothing.
    bound = np.zeros(3) if min_losses is None else np.asarray(min_losses)
    seq = _loss_sequence(steps=8, seed=2).astype(float) + bound
    seq[2, 0] = 0.0
    seq[3, 1] = bound[1]
    seq[5, 2] = 0.0
    b = FAMO(min_losses=min_losses)
    for losses in seq:
        w = np.asarray(b.aggregate(None, losses.astype("float32")).weights)
        expected = _famo_weights_over_present_tasks(np.array(b.logits), losses, bound)
        np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-7)
        absent = losses <= bound
        assert np.all(w[absent] == 0.0) and abs(w.sum() - 1.0) < 1e-5


def test_config_and_validation():
    b = FAMO(learning_rate=0.01, weight_decay=0.0, min_losses=[0.0, 0.1])
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, FAMO) and again.get_config() == b.get_config()
    with pytest.raises(ValueError, match="Received: learning_rate=0"):
        FAMO(learning_rate=0)
    with pytest.raises(ValueError, match="Received: weight_decay=-0.1"):
        FAMO(weight_decay=-0.1)
    with pytest.raises(ValueError, match="Expected 3 `min_losses`"):
        FAMO(min_losses=[0.0, 0.0]).aggregate(None, [1.0, 1.0, 1.0])


def test_a_zero_previous_loss_gives_no_logit_gradient_with_three_tasks():
    # Step 2 after losses [0, 1, 1]: task 0 had no labels, so delta = [0, log 2, 0]
    # (not log(1e-8) - log(1) for task 0); z = 1/3 and the gradient
    # z (delta - z . delta) = log 2 [-1, 2, -1] / 9. Adam's first step moves each
    # logit by the learning rate against the sign of its gradient.
    b = FAMO()
    b.aggregate(None, [0.0, 1.0, 1.0])
    b.aggregate(None, [1.0, 0.5, 1.0])
    np.testing.assert_allclose(np.array(b.logits), [0.025, -0.025, 0.025], rtol=1e-4)


def test_a_zero_loss_gives_no_delta_at_the_next_step_either():
    # Task 0 has no labels at step 2: delta_0 = 0 at step 2 (loss 0 now) and
    # at step 3 (loss 0 at the previous step), not log(L(1) / L(3)) from the
    # last step it had labels. The weights are checked where every task has a loss.
    seq = np.array([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0], [2.0, 0.25, 1.0], [1.5, 0.2, 0.9]])
    ref = _ReferenceFAMO(3)
    b = FAMO()
    for losses in seq:
        w = np.asarray(b.aggregate(None, losses).weights)
        expected = ref.step(losses)
        np.testing.assert_allclose(np.array(b.logits), ref.xi, rtol=1e-4, atol=1e-6)
        if losses.min() > 0:
            np.testing.assert_allclose(w, expected, rtol=1e-4)
