import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl.balancers import EqualWeighting, StaticWeighting

J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def test_get_by_alias_instance_and_config():
    assert isinstance(balancers.get("ew"), EqualWeighting)
    assert isinstance(balancers.get("EW"), EqualWeighting)
    assert isinstance(balancers.get(None), EqualWeighting)
    b = StaticWeighting([2.0, 1.0])
    assert balancers.get(b) is b
    again = balancers.get(balancers.serialize(b))
    assert isinstance(again, StaticWeighting) and again.weights_config == [2.0, 1.0]
    short = balancers.get({"class_name": "fixed", "config": {"weights": [1.0, 3.0]}})
    assert short.weights_config == [1.0, 3.0]


def test_unknown_identifiers():
    with pytest.raises(ValueError, match=r"expected one of \[.*'ew'.*\].*balancer='bogus'"):
        balancers.get("bogus")
    with pytest.raises(ValueError, match="Received: balancer=3 of type int"):
        balancers.get(3)


def test_equal_and_static_weighting_reference_values():
    ew = EqualWeighting().aggregate(J, [1.0, 1.0])
    np.testing.assert_allclose(ew.direction, [2.0, 2.0, 2.0])
    fixed = StaticWeighting([0.5, 2.0]).aggregate(J, [1.0, 1.0])
    np.testing.assert_allclose(fixed.direction, [10.0, 2.5, 2.5])
    np.testing.assert_allclose(fixed.weights, [0.5, 2.0])
    assert EqualWeighting().aggregate(None, [1.0, 2.0]).direction is None


def test_static_weighting_by_task_name():
    b = StaticWeighting({"b": 3.0})
    b.set_task_names(["a", "b"])
    np.testing.assert_allclose(b.aggregate(None, [1.0, 1.0]).weights, [1.0, 3.0])
    with pytest.raises(ValueError, match=r"unknown tasks \['c'\]"):
        StaticWeighting({"c": 1.0}).set_task_names(["a", "b"])
    with pytest.raises(ValueError, match="needs task names"):
        StaticWeighting({"a": 1.0}).aggregate(None, [1.0, 1.0])


@pytest.mark.parametrize("weights", [[-1.0, 1.0], [float("nan"), 1.0], ["a", 1.0]])
def test_static_weighting_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="Received an invalid value for `weights`"):
        StaticWeighting(weights)


def test_aggregate_validates_shapes():
    b = EqualWeighting()
    with pytest.raises(ValueError, match=r"Expected `losses` to be a vector.*\(2, 1\)"):
        b.aggregate(J, [[1.0], [1.0]])
    with pytest.raises(ValueError, match=r"num_tasks=3 rows.*\(2, 3\)"):
        b.aggregate(J, [1.0, 1.0, 1.0])
    b.aggregate(J, [1.0, 1.0])
    with pytest.raises(ValueError, match="built for 2 tasks"):
        b.aggregate(np.ones((3, 3)), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="Expected 3 weights"):
        StaticWeighting([1.0, 1.0]).aggregate(np.ones((3, 3)), [1.0, 1.0, 1.0])


def test_gradient_method_needs_a_jacobian():
    class Needs(balancers.Balancer):
        requires_jacobian = True

    with pytest.raises(ValueError, match="needs the Jacobian.*jacobian=None"):
        Needs().aggregate(None, [1.0, 2.0])


def test_aggregate_runs_inside_tf_function():
    b = StaticWeighting([1.0, 0.5])
    fn = tf.function(lambda jac, losses: b.aggregate(jac, losses).direction, jit_compile=True)
    np.testing.assert_allclose(
        fn(tf.constant(J, tf.float32), tf.constant([1.0, 1.0])), [-1.0, 1.5, 1.5]
    )
