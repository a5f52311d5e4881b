"""The losses' analytic gradients (otgpu.loss_terms, the mathematics of otgpu.torch)
against central finite differences of their values."""

import numpy as np
import pytest

import otgpu

TIGHT = dict(eps=0.3, tol=1e-13)


def fd(fun, arr, idx, h=1e-6):
    plus, minus = arr.copy(), arr.copy()
    plus[idx] += h
    minus[idx] -= h
    return (fun(plus) - fun(minus)) / (2 * h)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("cost_kind", ["sqeuclidean", "euclidean"])
def test_loss_gradients_match_finite_differences(debiased, cost_kind):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(9, 2)) + 0.5
    a = rng.uniform(0.5, 1.5, 7)
    a /= a.sum()
    opts = dict(TIGHT, cost_kind=cost_kind)
    t = otgpu.loss_terms(x, y, a=a, debiased=debiased, **opts)
    gx, gy = t.grad_x(), t.grad_y()
    assert gx.shape == x.shape and gy.shape == y.shape
    value = lambda xx, yy: otgpu.loss_terms(xx, yy, a=a, debiased=debiased, **opts).value
    for idx in [(0, 0), (4, 1)]:
        assert gx[idx] == pytest.approx(fd(lambda v: value(v, y), x, idx), rel=1e-5, abs=1e-8)
        assert gy[idx] == pytest.approx(fd(lambda v: value(x, v), y, idx), rel=1e-5, abs=1e-8)
    if debiased:
        assert t.value == pytest.approx(otgpu.sinkhorn_divergence(x, y, a=a, **opts), rel=1e-9)
        # S_eps(x, x) = 0 and its gradient vanishes there.
        z = otgpu.loss_terms(x, x, a=a, b=a, debiased=True, **opts)
        assert abs(z.value) < 1e-10
        np.testing.assert_allclose(z.grad_x(), 0, atol=1e-8)


def test_batched_relative_eps_matches_per_problem_terms():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 8, 2)) * np.array([1.0, 2.0, 3.0])[:, None, None]
    t = otgpu.loss_terms(x, y, debiased=True, eps=0.5, eps_relative=True, tol=1e-12)
    eps = t.xy.eps
    assert len(set(eps.tolist())) == 3  # distinct absolute eps: one self solve each
    assert t.value.shape == (3,) and t.grad_x().shape == x.shape
    for k in range(3):
        one = otgpu.loss_terms(x[k], y[k], debiased=True, eps=float(eps[k]), tol=1e-12)
        assert t.value[k] == pytest.approx(one.value, rel=1e-8)
        np.testing.assert_allclose(t.grad_x()[k], one.grad_x(), atol=1e-9)
        np.testing.assert_allclose(t.grad_y()[k], one.grad_y(), atol=1e-9)
