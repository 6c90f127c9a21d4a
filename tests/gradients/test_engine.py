import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.gradients import engine
from keras_mtl.gradients.flatten import jacobian_rows, unflatten
from tests.models.helpers import TASKS, NormalizedEMA, build, data, traced_train_step

LOSS = {"task_1": "mse", "task_2": "mse"}


def test_jacobian_rows_and_unflatten_round_trip():
    rng = np.random.default_rng(0)
    variables = [tf.Variable(rng.normal(size=s).astype("float32")) for s in [(3, 2), (2,), (4,)]]
    per_task = [
        [tf.constant(rng.normal(size=v.shape).astype("float32")) for v in variables]
        for _ in range(3)
    ]
    per_task[1][2] = None  # a task that does not reach a variable has zeros there
    jac = jacobian_rows(per_task, variables).numpy()
    expected = np.stack(
        [
            np.concatenate(
                [
                    np.zeros(v.shape).ravel() if g is None else np.ravel(g)
                    for g, v in zip(gs, variables, strict=True)
                ]
            )
            for gs in per_task
        ]
    )
    np.testing.assert_array_equal(jac, expected)
    pieces = unflatten(tf.constant(expected[0]), variables)
    for piece, g in zip(pieces, per_task[0], strict=True):
        np.testing.assert_array_equal(piece.numpy(), g.numpy())


def test_all_finite_is_exact_also_when_a_sum_overflows():
    big = tf.constant([3e38, 3e38, -1.0])  # finite, but its float32 sum is inf
    assert bool(engine._all_finite([big]))
    assert not bool(engine._all_finite([tf.ones(3), tf.constant([1.0, np.inf])]))
    assert not bool(engine._all_finite([tf.constant([[np.nan]])]))
    assert not bool(engine._all_finite([tf.constant([np.inf, -np.inf])]))
    sparse = tf.IndexedSlices(tf.constant([[1.0, np.nan]]), tf.constant([0]), tf.constant([4, 2]))
    assert not bool(engine._all_finite([sparse]))
    assert bool(engine._all_finite([]))


@keras.saving.register_keras_serializable(package="keras_mtl_tests")
class SqrtGate(keras.layers.Layer):
    """`x * sqrt(g)` with `g` initialised to 0: finite outputs, infinite gradient for `g`."""

    def build(self, input_shape):
        self.g = self.add_weight(shape=(), initializer="zeros", name="g")

    def call(self, x):
        return x + x * keras.ops.sqrt(self.g)


def _sqrt_gate_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = SqrtGate(name="gate")(keras_mtl.layers.SharedBottom(units=(8,), name="trunk")(inputs))
    return keras_mtl.MultiTaskModel(
        inputs=inputs, outputs={t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    )


@pytest.mark.parametrize("balancer", ["ew", "normalized_ema"])
def test_a_nonfinite_gradient_with_finite_losses_is_never_applied(balancer):
    x, y = data(n=16)
    make = NormalizedEMA if balancer == "normalized_ema" else lambda: "ew"
    model = _sqrt_gate_model()
    model.compile(optimizer="sgd", loss=LOSS, balancer=make())
    with pytest.raises(tf.errors.InvalidArgumentError, match="Non-finite gradient"):
        model.fit(x, y, batch_size=16, verbose=0)

    model = _sqrt_gate_model()
    model.compile(optimizer="sgd", loss=LOSS, balancer=make(), nonfinite="skip")
    before = [np.array(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=8, verbose=0)
    assert history.history["skipped_steps"] == [2.0]
    for b, v in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(b, np.array(v))


def test_prepare_probes_once_per_set_of_trainable_variables():
    class Counting(NormalizedEMA):
        sizes = []

        def prepare(self, num_params):
            Counting.sizes.append(num_params)

    x, y = data(n=16)
    model = _sqrt_gate_model()
    model.get_layer("gate").trainable = False
    model.compile(optimizer="sgd", loss=LOSS, balancer=Counting())
    model.fit(x, y, batch_size=16, verbose=0)
    model.fit(x, y, batch_size=16, verbose=0)
    assert Counting.sizes == [6 * 8 + 8]
    # Freezing the trunk's bias changes the trainable variables: the probe runs again.
    model.get_layer("trunk").dense_layers[0].bias.trainable = False
    model.fit(x, y, batch_size=16, verbose=0)
    assert Counting.sizes == [6 * 8 + 8, 6 * 8]


def test_an_engine_made_without_compile_refuses_an_unknown_layer_name():
    # An engine made by hand checks the names as compile does, with the same message.
    model = _sqrt_gate_model()
    model.compile(optimizer="sgd", loss=LOSS, balancer=NormalizedEMA())
    with pytest.raises(ValueError, match=r"'nope' in `shared_layers` is not a layer.*'gate'"):
        engine.GradientEngine("loop", shared_layers=["nope"]).prepare(model)
    with pytest.raises(ValueError, match=r"layers or layer names.*element of type int"):
        engine.GradientEngine("loop", shared_layers=[3]).prepare(model)
    found = engine.GradientEngine("loop", shared_layers=["gate"])
    found.prepare(model)
    assert found.shared_variable_paths == ["gate/g"]


def _unordered_variable_accesses(graph_def):
    """(write, other) pairs of ops on one resource with no path between them."""
    nodes = {n.name: n for n in graph_def.node}
    inputs = {name: {i.lstrip("^").split(":")[0] for i in n.input} for name, n in nodes.items()}
    resources = [
        name
        for name, n in nodes.items()
        if n.op == "Placeholder" and n.attr["dtype"].type == tf.resource.as_datatype_enum
    ]

    def ancestors(name):
        seen, stack = set(), [name]
        while stack:
            for parent in inputs.get(stack.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    pairs = []
    for resource in resources:
        before = {name: ancestors(name) for name in nodes if resource in inputs[name]}
        for write in (u for u in before if nodes[u].op != "ReadVariableOp"):
            for other in before:
                if other != write and other not in before[write] and write not in before[other]:
                    pairs.append((write, other))
    return pairs


@pytest.mark.parametrize("balancer", ["uw", "imtl"])
def test_balancer_reads_stay_ordered_before_the_update_after_grappler(balancer):
    # Both read their trainable variables to form the weights; without an
    # explicit edge Grappler's dependency optimizer left those reads unordered
    # with the optimizer's writes, and 1 run in 30 of IMTL diverged.
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer

    x, y = data(n=16)
    model = build()
    model.compile(optimizer="adam", loss=LOSS, balancer=balancer)
    model.fit(x, y, batch_size=16, verbose=0)
    graph = traced_train_step(model, x, y)
    keep = [op.name for op in graph.get_operations() if "Assign" in op.type or op.type == "Assert"]
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    meta.collection_def["train_op"].node_list.value.extend(keep)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)
    assert any(n.op == "AssignSubVariableOp" for n in optimized.node)
    assert _unordered_variable_accesses(optimized) == []
