import numpy as np
from keras import ops

from keras_mtl import balancers
from keras_mtl.balancers import Balancer, BalanceResult, InitialLossNormalization


class _Record(Balancer):
    """A tiny Jacobian method with weights [1, 2] that records what it sees."""

    requires_jacobian = True
    seen = None

    def compute(self, jacobian, losses, representation=None):
        _Record.seen = (np.asarray(jacobian), np.asarray(losses))
        weights = ops.convert_to_tensor([1.0, 2.0])
        return BalanceResult(ops.matmul(weights[None], jacobian)[0], weights)


def test_weights_are_inverse_first_losses():
    b = InitialLossNormalization()
    np.testing.assert_allclose(b.aggregate(None, [4.0, 0.5]).weights, [0.25, 2.0])
    np.testing.assert_allclose(b.aggregate(None, [1.0, 3.0]).weights, [0.25, 2.0])
    np.testing.assert_allclose(np.array(b.initial_losses), [4.0, 0.5])


def test_zero_first_loss_waits_for_a_positive_one():
    b = InitialLossNormalization()
    np.testing.assert_allclose(b.aggregate(None, [0.0, 2.0]).weights, [1.0, 0.5])
    np.testing.assert_allclose(b.aggregate(None, [0.0, 1.0]).weights, [1.0, 0.5])
    np.testing.assert_allclose(b.aggregate(None, [5.0, 1.0]).weights, [0.2, 0.5])
    w = InitialLossNormalization().aggregate(None, [1e-8, 1e6]).weights
    np.testing.assert_allclose(w, [1e8, 1e-6], rtol=1e-6)


def test_wrapping_a_jacobian_method():
    b = InitialLossNormalization(_Record())
    assert b.requires_jacobian
    jac = np.array([[2.0, 0.0], [0.0, 3.0]])
    b.aggregate(jac, [2.0, 0.5])
    result = b.aggregate(jac, [1.0, 1.0])
    seen_jac, seen_losses = _Record.seen
    np.testing.assert_allclose(seen_jac, [[1.0, 0.0], [0.0, 6.0]])
    np.testing.assert_allclose(seen_losses, [0.5, 2.0])
    np.testing.assert_allclose(result.weights, [0.5, 4.0])
    np.testing.assert_allclose(result.direction, [1.0, 12.0])


def test_state_restore_and_config():
    b = InitialLossNormalization("dwa")
    b.aggregate(None, [3.0, 0.0])
    again = balancers.deserialize(balancers.serialize(b))
    assert type(again.inner).__name__ == "DWA"
    if not again.built:  # a config with `build_config` comes back built
        again.build(2)
    for v, w in zip(again.variables, b.variables, strict=True):
        v.assign(w)
    for losses in ([1.0, 2.0], [0.5, 0.25]):
        np.testing.assert_array_equal(
            again.aggregate(None, losses).weights, b.aggregate(None, losses).weights
        )
    np.testing.assert_allclose(np.array(again.initial_losses), [3.0, 2.0])
