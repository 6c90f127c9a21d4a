import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.layers import ExpertBank
from tests.layers import reference


def test_matches_per_expert_mlps():
    bank = ExpertBank(num_experts=4, units=(6, 3), bias_initializer="random_normal")
    x = np.random.default_rng(0).normal(size=(5, 7)).astype("float32")
    out = np.asarray(bank(x))
    np.testing.assert_allclose(out, reference.expert_bank(bank, x), rtol=1e-5, atol=1e-5)


def test_higher_rank_inputs_apply_the_experts_per_position():
    bank = ExpertBank(num_experts=3, units=(4, 2), activation="tanh")
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype("float32")
    out = np.asarray(bank(x))
    expected = reference.expert_bank(bank, x.reshape(-1, 5), activation=np.tanh)
    np.testing.assert_allclose(out.reshape(-1, 3, 2), expected, rtol=1e-5, atol=1e-5)


def test_experts_are_distinct_and_initialised_like_one_dense_kernel():
    keras.utils.set_random_seed(0)
    bank = ExpertBank(num_experts=8, units=(64,))
    bank.build((None, 100))
    kernel = np.asarray(bank.kernels[0])
    # Glorot uniform for a (100, 64) kernel: std sqrt(2 / (100 + 64)).
    expected_std = np.sqrt(2.0 / 164.0)
    assert kernel.shape == (100, 8, 64)
    for e in range(8):
        assert abs(kernel[:, e].std() / expected_std - 1.0) < 0.05
        assert np.abs(kernel[:, e]).max() <= np.sqrt(6.0 / 164.0)  # the uniform's bound
    assert abs(np.corrcoef(kernel[:, 0].ravel(), kernel[:, 1].ravel())[0, 1]) < 0.05


def test_no_two_weights_start_equal():
    # Keras initializers repeat their values: every weight must get its own draw,
    # also when the user passes one initializer instance.
    init = keras.initializers.RandomNormal()
    layers = [
        ExpertBank(num_experts=2, units=(5, 5, 5), kernel_initializer=init),
        keras_mtl.layers.CGC(
            num_tasks=2,
            num_task_experts=2,
            num_shared_experts=2,
            expert_units=5,
            kernel_initializer=init,
            gate_kwargs={"kernel_initializer": init},
        ),
        keras_mtl.layers.MMoE(
            num_tasks=3,
            num_experts=2,
            expert_units=5,
            gate="dselect_k",
            gate_kwargs={"k": 1, "z_initializer": init},
        ),
        keras_mtl.layers.ESMM(tower_units=(5,), kernel_initializer=init),
    ]
    for layer in layers:
        layer(np.ones((2, 5), "float32"))
        kernels = [np.asarray(w).tobytes() for w in layer.weights if "bias" not in w.path]
        assert len(set(kernels)) == len(kernels), layer.name


def test_dropout_only_in_training():
    bank = ExpertBank(num_experts=2, units=(16,), dropout=0.5)
    x = np.random.default_rng(2).normal(size=(8, 4)).astype("float32")
    np.testing.assert_array_equal(np.asarray(bank(x)), np.asarray(bank(x, training=False)))
    trained = np.asarray(bank(x, training=True))
    assert (trained == 0).mean() > (np.asarray(bank(x)) == 0).mean()


def test_kernel_and_bias_regularisers_give_their_penalties():
    bank = ExpertBank(
        num_experts=2,
        units=(3, 2),
        bias_initializer="random_normal",
        kernel_regularizer=keras.regularizers.L2(0.1),
        bias_regularizer=keras.regularizers.L1(0.2),
    )
    bank.build((None, 4))
    # One penalty per weight: L2 on both stacked kernels, L1 on both biases.
    expected = sum(0.1 * np.sum(np.square(k)) for k in bank.kernels) + sum(
        0.2 * np.sum(np.abs(b)) for b in bank.biases
    )
    assert len(bank.losses) == 4
    assert float(sum(bank.losses)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("as_config", [False, True])
def test_user_supplied_expert_is_cloned(as_config, tmp_path):
    template = keras.layers.Dense(3, activation="tanh", name="my_expert")
    expert = keras.layers.serialize(template) if as_config else template
    bank = ExpertBank(num_experts=4, expert=expert)
    x = np.random.default_rng(3).normal(size=(5, 6)).astype("float32")
    out = np.asarray(bank(x))
    assert out.shape == (5, 4, 3)
    assert not template.built  # the template is only a recipe
    kernels = [np.asarray(e.kernel) for e in bank.experts]
    assert len({k.tobytes() for k in kernels}) == 4  # independent clones
    for e, expert_layer in enumerate(bank.experts):
        expected = np.tanh(x @ kernels[e] + np.asarray(expert_layer.bias))
        np.testing.assert_allclose(out[:, e], expected, rtol=1e-5, atol=1e-6)
    assert ExpertBank.from_config(bank.get_config()).get_config() == bank.get_config()
    inputs = keras.Input((6,))
    model = keras.Model(inputs, bank(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), out, rtol=1e-6)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_model_experts_stay_distinct_after_loading(kind, tmp_path):
    # load_model's object-sharing scope made every clone of a Sequential or
    # functional expert reuse the first clone's layers (12 weights became 4).
    if kind == "sequential":
        expert = keras.Sequential([keras.layers.Dense(6, activation="relu"), keras.layers.Dense(4)])
    else:
        inner = keras.Input((5,))
        expert = keras.Model(inner, keras.layers.Dense(4)(keras.layers.Dense(6)(inner)))
    inputs = keras.Input((5,))
    outputs = keras_mtl.layers.MMoE(2, 3, expert=expert, name="mmoe")(inputs)
    model = keras.Model(inputs, {"a": outputs[0], "b": outputs[1]})
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert len(loaded.weights) == len(model.weights)
    experts = loaded.get_layer("mmoe").experts.experts
    assert experts[0].layers[-1] is not experts[1].layers[-1]
    for key, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(loaded.predict(x, verbose=0)[key], value, rtol=1e-6)


def test_a_user_experts_mask_is_the_experts_own():
    # A GRU returning its last state has no time axis left: the (batch, time)
    # mask attached to its (batch, E, units) output made a pooling layer after
    # it average over the first experts only.
    tokens = np.array([[3, 1, 0, 0], [2, 5, 7, 0]], "int32")
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(9, 5, mask_zero=True)(inputs)
    experts = ExpertBank(2, expert=keras.layers.GRU(3))(embedded)
    model = keras.Model(inputs, [experts, keras.layers.GlobalAveragePooling1D()(experts)])
    full, pooled = (np.asarray(t) for t in model(tokens))
    np.testing.assert_allclose(pooled, full.mean(1), rtol=1e-5, atol=1e-6)
    # An expert that keeps the time axis keeps the mask.
    bank = ExpertBank(2, expert=keras.layers.GRU(3, return_sequences=True))
    x = keras.layers.Embedding(9, 5, mask_zero=True)
    mask = bank.compute_mask(x(tokens), x.compute_mask(tokens))
    np.testing.assert_array_equal(np.asarray(mask), tokens != 0)


def test_user_expert_on_image_feature_maps():
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
    bank = ExpertBank(num_experts=2, expert=conv)
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 3)).astype("float32")
    out = np.asarray(bank(x))
    assert out.shape == (2, 6, 6, 2, 4)
    np.testing.assert_allclose(out, reference.expert_bank(bank, x), rtol=1e-4, atol=1e-5)
    assert tuple(bank(keras.Input((6, 6, 3))).shape) == (None, 6, 6, 2, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_experts": 0}, "num_experts=0"),
        ({"num_experts": -2}, "num_experts=-2"),
        ({"num_experts": 2, "units": ()}, r"units=\(\)"),
        ({"num_experts": 2, "units": (3, 0)}, r"units=\(3, 0\)"),
        ({"num_experts": 2, "dropout": 1.5}, "dropout=1.5"),
        ({"num_experts": 2, "expert": "dense"}, "expert='dense'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExpertBank(**kwargs)
