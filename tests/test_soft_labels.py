"""Golden values for the accuracy–cost soft labels (docs/method.md#soft-labels), computed by hand."""
import math

import numpy as np
import pytest

from vlrb.routing.soft_labels import hard_labels, label_diagnostics, parse_lambda, soft_labels

# one sample, four models: 0, 1 and 3 are correct; model 2 is wrong (and would be the cheapest)
Y1 = np.array([[1, 1, 0, 1]], dtype=np.int8)
C1 = np.array([[1e-5, 2e-5, 5e-6, 3e-5]], dtype=np.float32)


def test_lambda_zero_is_uniform_over_correct():
    t = soft_labels(Y1, C1, 0.0)
    np.testing.assert_allclose(t, [[1 / 3, 1 / 3, 0.0, 1 / 3]], rtol=1e-6)
    assert t.dtype == np.float32


def test_middle_lambda_by_hand():
    # λ = 1000, s = 100: λ·s·c = 1, 2, (wrong), 3, so the weights are e^-1, e^-2, 0, e^-3
    w = [math.exp(-1), math.exp(-2), 0.0, math.exp(-3)]
    z = sum(w)
    expected = [[w[0] / z, w[1] / z, 0.0, w[3] / z]]  # ≈ 0.6652, 0.2447, 0, 0.0900
    np.testing.assert_allclose(soft_labels(Y1, C1, 1000, cost_scale=100), expected, rtol=1e-5)
    # the cost scale is a separate knob: s = 1 with λ = 1e5 is the same product
    np.testing.assert_allclose(soft_labels(Y1, C1, 1e5, cost_scale=1.0), expected, rtol=1e-5)


def test_power_scheme_by_hand():
    # g(c) = (s·c + 1e-12)^-λ with λ = 1, s = 100: c = 0.01, 0.02 → g = 1, 1/2 → 2/3, 1/3
    t = soft_labels([[1, 1]], [[0.01, 0.02]], 1.0, cost_scale=100, scheme="power")
    np.testing.assert_allclose(t, [[2 / 3, 1 / 3]], rtol=1e-6)


@pytest.mark.parametrize("lam", [math.inf, "inf", ".inf", "+inf", "Infinity"])
def test_lambda_inf_is_one_hot_on_cheapest_correct(lam):
    # models 1 and 2 tie as the cheapest correct ones: the lowest index wins; model 3 is cheaper but wrong
    Y = [[1, 1, 1, 0]]
    C = [[2e-5, 1e-5, 1e-5, 0.0]]
    np.testing.assert_array_equal(soft_labels(Y, C, lam), [[0, 1, 0, 0]])
    np.testing.assert_array_equal(hard_labels(Y, C), [1])


def test_large_finite_lambda_approaches_hard_labels():
    t = soft_labels(Y1, C1, 1e7)
    np.testing.assert_allclose(t, [[1, 0, 0, 0]], atol=1e-6)


def test_no_correct_model_falls_back_to_cheapest():
    Y = [[0, 0, 0], [1, 0, 1]]
    C = [[3e-5, 1e-6, 2e-5], [1e-5, 1e-6, 1e-5]]
    for lam in (0, 100, math.inf):
        t = soft_labels(Y, C, lam)
        np.testing.assert_array_equal(t[0], [0, 1, 0])  # argmin of the unscaled cost
        # equal costs: any finite λ splits the mass; λ = ∞ is the hard label, lowest index
        np.testing.assert_allclose(t[1], [1, 0, 0] if lam == math.inf else [0.5, 0, 0.5])
    assert hard_labels(Y, C).tolist() == [1, 0]
    soft = soft_labels(Y, C, 1000, fallback="cost_soft")
    assert soft[0].argmax() == 1 and np.isclose(soft[0].sum(), 1) and (soft[0] > 0).all()


@pytest.mark.parametrize("scheme", ["exp", "power"])
@pytest.mark.parametrize("lam", [0, 1e-3, 1, 1e4, 1e12, 1e300, math.inf])
def test_extreme_costs_give_no_nan(scheme, lam):
    rng = np.random.default_rng(0)
    Y = rng.integers(0, 2, (50, 6)).astype(np.int8)
    Y[0] = 0
    C = np.where(rng.random((50, 6)) < 0.5, 1e-12, 1e3).astype(np.float32)
    C[1] = 0.0  # a free model (missing cost cells are 0)
    t = soft_labels(Y, C, lam, scheme=scheme)
    assert t.dtype == np.float32 and np.isfinite(t).all()
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-5)
    assert (t[Y.sum(1) > 0][Y[Y.sum(1) > 0] == 0] == 0).all()  # no mass on wrong models


def test_parse_lambda():
    assert parse_lambda("0.5") == 0.5 and parse_lambda(3) == 3.0 and parse_lambda(".inf") == math.inf
    for bad in (-1, "-2", "abc", float("nan")):
        with pytest.raises(ValueError):
            parse_lambda(bad)
    with pytest.raises(TypeError):
        parse_lambda(None)


def test_input_errors():
    with pytest.raises(ValueError, match="one shape"):
        soft_labels(np.ones((3, 2)), np.ones((3, 3)), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        soft_labels([[1, 1]], [[-1.0, 1.0]], 1.0)
    with pytest.raises(ValueError, match="scheme"):
        soft_labels([[1]], [[1.0]], 1.0, scheme="linear")
    with pytest.raises(ValueError, match="fallback"):
        soft_labels([[1]], [[1.0]], 1.0, fallback="drop")


def test_label_diagnostics_by_hand():
    Y = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    C = np.array([[1e-5, 2e-5, 1e-6, 1e-6], [1e-5, 1e-6, 2e-5, 3e-5]])
    d = label_diagnostics(soft_labels(Y, C, 0.0), Y, C)
    # row 0 uniform over 2 models: H = ln 2, exp(H) = 2; row 1 one-hot: H = 0, exp(H) = 1
    assert d["entropy_mean"] == pytest.approx(math.log(2) / 2)
    assert d["effective_models"] == pytest.approx(1.5)
    assert d["cheapest_correct_mass_mean"] == pytest.approx(0.5)  # only row 0 has a correct model
    assert d["no_correct_share"] == pytest.approx(0.5)
    assert d["models_above_1pct"] == pytest.approx(1.5)
    hard = label_diagnostics(soft_labels(Y, C, "inf"), Y, C)
    assert hard["entropy_mean"] == 0 and hard["cheapest_correct_mass_mean"] == 1.0
