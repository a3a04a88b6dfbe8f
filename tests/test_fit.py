"""kinetics_jax.scaling.fit: the sigmoid law recovers known parameters from synthetic points."""

from __future__ import annotations

import numpy as np
import pytest

from kinetics_jax.scaling.fit import SigmoidFit, fit_sigmoid, sigmoid_law

COST = np.geomspace(1e12, 1e16, 64)


@pytest.mark.parametrize("a, b, s", [(0.8, 14.0, 0.4), (0.35, 12.7, 0.15), (0.97, 15.2, 0.6)])
def test_recovers_noiseless_parameters(a, b, s):
    fit = fit_sigmoid(COST, sigmoid_law(COST, a, b, s))
    assert fit.a == pytest.approx(a, abs=5e-3) and fit.b == pytest.approx(b, abs=0.02)
    assert fit.s == pytest.approx(s, rel=0.05)
    assert fit.r2 > 0.999 and fit.rmse < 5e-3 and fit.num_points == 64


def test_recovers_parameters_from_noisy_points():
    y = sigmoid_law(COST, 0.7, 13.5, 0.3) + np.random.default_rng(0).normal(0.0, 0.03, COST.size)
    fit = fit_sigmoid(COST, np.clip(y, 0, 1))
    assert fit.a == pytest.approx(0.7, abs=0.03) and fit.b == pytest.approx(13.5, abs=0.1)
    assert fit.s == pytest.approx(0.3, abs=0.1)
    assert fit.r2 > 0.95 and fit.rmse < 0.04


def test_predict_is_the_law_and_bounded():
    fit = SigmoidFit(a=0.6, b=14.0, s=0.5, r2=1.0, rmse=0.0, num_points=3)
    assert fit.predict(1e14) == pytest.approx(0.3)
    np.testing.assert_allclose(fit.predict(COST), sigmoid_law(COST, 0.6, 14.0, 0.5))
    assert np.all((fit.predict(COST) >= 0) & (fit.predict(COST) <= 0.6))


def test_a_step_and_a_flat_curve_fit_without_failing():
    step = fit_sigmoid(COST, np.where(COST >= 3e14, 0.5, 0.0))
    assert step.a == pytest.approx(0.5, abs=0.01) and 14.0 < step.b < 14.8 and step.r2 > 0.99
    flat = fit_sigmoid(COST, np.zeros(COST.size))
    assert np.isnan(flat.r2) and flat.rmse < 0.01 and 0 < flat.a <= 1


def test_refuses_too_few_or_degenerate_points():
    with pytest.raises(ValueError):
        fit_sigmoid([1e12, 1e13], [0.1, 0.2])
    with pytest.raises(ValueError):
        fit_sigmoid([1e12] * 4, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError):
        fit_sigmoid([0.0, 1e12, 1e13], [0.1, 0.2, 0.3])
