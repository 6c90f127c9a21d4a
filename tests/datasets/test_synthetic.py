import numpy as np
import pytest

from keras_mtl.datasets import synthetic


def test_same_seed_same_data_and_different_seed_different_data():
    a = synthetic.load_data(num_train=50, num_test=10, seed=3)
    b = synthetic.load_data(num_train=50, num_test=10, seed=3)
    c = synthetic.load_data(num_train=50, num_test=10, seed=4)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[1][1]["task_2"], b[1][1]["task_2"])
    assert not np.allclose(a[0][0], c[0][0])


def test_without_sines_and_noise_labels_are_the_paper_linear_tasks():
    # With m = 0 and no noise, y_t = w_t^T x: the cosine of the two weight
    # vectors is the correlation p, which least squares recovers exactly.
    for p in (0.5, 0.9, -0.3):
        x, y = synthetic.generate(400, correlation=p, input_dim=8, num_sin=0, noise_std=0.0)
        w1 = np.linalg.lstsq(x, y["task_1"][:, 0], rcond=None)[0]
        w2 = np.linalg.lstsq(x, y["task_2"][:, 0], rcond=None)[0]
        assert np.linalg.norm(w1) == pytest.approx(1.0, abs=1e-4)
        assert np.linalg.norm(w2) == pytest.approx(1.0, abs=1e-4)
        assert w1 @ w2 == pytest.approx(p, abs=1e-4)


def test_label_correlation_falls_with_the_task_correlation():
    corr = []
    for p in (1.0, 0.9, 0.5):
        _, y = synthetic.generate(20000, correlation=p, seed=0, param_std=1.0)
        corr.append(np.corrcoef(y["task_1"][:, 0], y["task_2"][:, 0])[0, 1])
    # p = 1: the tasks differ only by the noise (variance 0.01 each).
    assert corr[0] > 0.97 and corr[0] > corr[1] > corr[2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 0}, "num_samples=0"),
        ({"num_samples": 5, "correlation": 1.5}, "correlation=1.5"),
        ({"num_samples": 5, "input_dim": 1}, "input_dim=1"),
        ({"num_samples": True}, "num_samples=True"),
        ({"num_samples": 5.0}, "num_samples=5.0"),
        ({"num_samples": 5, "correlation": "high"}, r"`correlation`, .*correlation='high'"),
        ({"num_samples": 5, "num_sin": np.float32(1.5)}, r"num_sin=np.float32\(1.5\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.generate(**kwargs)


def test_numpy_scalars_are_accepted():
    a = synthetic.load_data(num_train=np.int64(8), num_test=np.int32(2), input_dim=np.int64(3))
    b = synthetic.load_data(num_train=8, num_test=2, input_dim=3)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    x, _ = synthetic.generate(np.int64(4), correlation=np.float32(0.5), num_sin=np.int64(1))
    assert x.shape == (4, 100)
    with pytest.raises(ValueError, match="num_train=-2"):
        synthetic.load_data(num_train=-2, num_test=5)


def test_index_sinusoids_follow_the_formula():
    x, y = synthetic.generate(50, correlation=1.0, input_dim=4, sinusoids="index", noise_std=0.0)
    # With p = 1 both tasks share w; recover z = w^T x from task_1 minus the known sines.
    for name in ("task_1", "task_2"):
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 2)))
        z = x @ q[:, 0]
        i = np.arange(1.0, 11.0)
        expected = z + np.sin(np.outer(z, i) + i**2).sum(axis=1)
        np.testing.assert_allclose(y[name][:, 0], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="sinusoids='bogus'"):
        synthetic.generate(5, sinusoids="bogus")


def test_scale_multiplies_both_weight_vectors():
    # y_t = c w_t^T x with |u_t| = 1: least squares recovers weights of norm c.
    x, y = synthetic.generate(300, correlation=0.5, input_dim=6, scale=2.5, num_sin=0, noise_std=0)
    w1 = np.linalg.lstsq(x, y["task_1"][:, 0], rcond=None)[0]
    w2 = np.linalg.lstsq(x, y["task_2"][:, 0], rcond=None)[0]
    assert np.linalg.norm(w1) == pytest.approx(2.5, abs=1e-4)
    assert np.linalg.norm(w2) == pytest.approx(2.5, abs=1e-4)
    assert w1 @ w2 == pytest.approx(0.5 * 2.5**2, abs=1e-3)


def test_label_noise_is_independent_per_task_with_the_given_std():
    # p = 1 and no sines: y_1 - y_2 = eps_1 - eps_2, of variance 2 noise_std^2
    # when the two tasks draw their own noise.
    x, y = synthetic.generate(20000, correlation=1.0, input_dim=5, num_sin=0, noise_std=0.1)
    e1 = y["task_1"][:, 0] - x @ np.linalg.lstsq(x, y["task_1"][:, 0], rcond=None)[0]
    e2 = y["task_2"][:, 0] - x @ np.linalg.lstsq(x, y["task_2"][:, 0], rcond=None)[0]
    assert e1.std() == pytest.approx(0.1, rel=0.03) and e2.std() == pytest.approx(0.1, rel=0.03)
    assert abs(np.corrcoef(e1, e2)[0, 1]) < 0.05
    diff = y["task_1"][:, 0] - y["task_2"][:, 0]
    assert diff.std() == pytest.approx(0.1 * np.sqrt(2), rel=0.03)


def test_load_data_splits_one_generated_sample_without_overlap():
    (x, y), (xt, yt) = synthetic.load_data(num_train=30, num_test=7, input_dim=4, seed=2)
    xa, ya = synthetic.generate(37, input_dim=4, seed=2)
    assert x.shape == (30, 4) and xt.shape == (7, 4)
    np.testing.assert_array_equal(x, xa[:30])
    np.testing.assert_array_equal(xt, xa[30:])
    np.testing.assert_array_equal(yt["task_1"], ya["task_1"][30:])
    np.testing.assert_array_equal(yt["task_2"], ya["task_2"][30:])
    # No test example is also a training example.
    assert not (xt[:, None, :] == x[None, :, :]).all(-1).any()


def test_inputs_are_standard_normal():
    # Sec. 4.1: x ~ N(0, I). A Gaussian has about 4.55% of its mass beyond 2
    # standard deviations; a uniform or rescaled input would not.
    x, _ = synthetic.generate(20000, input_dim=5, seed=0)
    assert abs(x.mean()) < 0.02 and x.std() == pytest.approx(1.0, abs=0.02)
    assert (np.abs(x) > 2).mean() == pytest.approx(0.0455, abs=0.004)


def test_arrays_are_float32():
    # The documented dtype of the features and of both labels, in both entry points.
    x, y = synthetic.generate(6, input_dim=3)
    (xs, ys), (xt, yt) = synthetic.load_data(num_train=4, num_test=2, input_dim=3)
    for array in (x, *y.values(), xs, *ys.values(), xt, *yt.values()):
        assert array.dtype == np.float32


def _nonlinear_residual(param_std):
    """Std of task_1 minus its best affine fit in x: what the sines add beyond w^T x."""
    x, y = synthetic.generate(5000, input_dim=5, param_std=param_std, noise_std=0.0, seed=0)
    a = np.c_[x, np.ones(len(x))].astype("float64")
    t = y["task_1"][:, 0].astype("float64")
    return (t - a @ np.linalg.lstsq(a, t, rcond=None)[0]).std()


def test_param_std_sets_how_non_linear_the_sines_are():
    # sin(alpha z + beta) ~ alpha z + beta for tiny alpha, beta: the labels are
    # then affine in x. With alpha, beta ~ N(0, 1) the sines bend them strongly.
    tiny, default, wide = (_nonlinear_residual(s) for s in (0.01, 0.1, 1.0))
    assert tiny < 1e-4 < default < 0.05 < 0.3 < wide


def test_load_data_passes_the_generator_arguments_on():
    # scale, num_sin, param_std and noise_std reach `generate`: no sines and no
    # noise give labels exactly linear in x with weights of norm `scale`.
    kw = dict(scale=3.0, num_sin=0, noise_std=0.0, param_std=0.5)
    (x, y), (xt, yt) = synthetic.load_data(num_train=40, num_test=10, input_dim=4, **kw)
    xa, ya = synthetic.generate(50, input_dim=4, **kw)
    np.testing.assert_array_equal(np.concatenate([y["task_2"], yt["task_2"]]), ya["task_2"])
    w = np.linalg.lstsq(x, y["task_1"][:, 0], rcond=None)[0]
    assert np.linalg.norm(w) == pytest.approx(3.0, abs=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": float("nan")}, r"`scale`, expected a finite float. Received: scale=nan"),
        ({"scale": float("inf")}, "scale=inf"),
        ({"param_std": float("nan")}, r"`param_std`, expected a finite float >= 0.*param_std=nan"),
        ({"param_std": -1.0}, "param_std=-1.0"),
        ({"noise_std": float("nan")}, r"`noise_std`, expected a finite float >= 0.*noise_std=nan"),
        ({"noise_std": -0.1}, "noise_std=-0.1"),
        ({"noise_std": "0.1"}, "noise_std='0.1'"),
        ({"seed": -1}, r"`seed`, expected a non-negative integer. Received: seed=-1"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"seed": "a"}, "seed='a'"),
    ],
)
def test_scale_stds_and_seed_are_checked(kwargs, message):
    # NaN or infinite values used to give all-NaN labels without an error.
    with pytest.raises(ValueError, match=message):
        synthetic.generate(5, **kwargs)
    with pytest.raises(ValueError, match=message):
        synthetic.load_data(num_train=4, num_test=1, **kwargs)


def test_zero_stds_and_a_negative_scale_are_valid():
    x, y = synthetic.generate(6, input_dim=4, scale=-2.0, param_std=0.0, noise_std=0.0, seed=0)
    assert np.isfinite(y["task_1"]).all() and np.isfinite(y["task_2"]).all()
    # With param_std = 0 the sines are sin(0): the labels are linear, y_1 = w_1^T x.
    w1 = np.linalg.lstsq(x, y["task_1"][:, 0], rcond=None)[0]
    assert np.linalg.norm(w1) == pytest.approx(2.0, abs=1e-4)
