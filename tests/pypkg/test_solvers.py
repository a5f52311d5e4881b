"""Every function of the package against POT or a closed form (NumPy)."""

import numpy as np
import ot
import pytest

import otgpu
from conftest import ot_eps_of_plan, plan, sqdist


def pot_plan(a, b, C, eps):
    return ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-13,
                       numItermax=200000)


def cloud(rng, n, m, d, shift=0.5):
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift


def test_sinkhorn_plan_and_values_match_pot(rng):
    x, y = cloud(rng, 40, 55, 3)
    a = rng.uniform(0.5, 1.5, 40)
    a /= a.sum()
    b = rng.uniform(0.5, 1.5, 55)
    b /= b.sum()
    eps = 0.2
    r = otgpu.sinkhorn(x, y, a=a, b=b, eps=eps, tol=1e-10)
    assert r.converged and r.backend == "cpu" and r.f.shape == (40,) and r.g.shape == (55,)
    C = sqdist(x, y)
    P_pot = pot_plan(a, b, C, eps)
    P = plan(r.f, r.g, C, a, b, eps)
    np.testing.assert_allclose(P, P_pot, atol=1e-9)
    assert r.transport_cost == pytest.approx(float(np.sum(P_pot * C)), rel=1e-7)
    assert r.ot_eps == pytest.approx(ot_eps_of_plan(P_pot, C, a, b, eps), rel=1e-7)
    assert r.eps == eps and r.tol == 1e-10 and r.marginal_error <= 1e-10
    rep = r.reports[0]
    assert set(rep) == {"eps", "ot_eps", "transport_cost", "marginal_error", "residual",
                        "iterations", "converged", "acceleration", "omega"}
    assert rep["iterations"] == r.iterations > 0


def test_sinkhorn_batched_cost_matrix_and_euclidean(rng):
    B, n, m = 3, 12, 17
    x = rng.normal(size=(B, n, 2))
    y = rng.normal(size=(B, m, 2))
    C = np.sqrt(sqdist(x, y))
    r_pts = otgpu.sinkhorn(x, y, cost_kind="euclidean", eps=0.3, tol=1e-11)
    r_mat = otgpu.sinkhorn(cost=C, eps=0.3, tol=1e-11)
    assert r_pts.f.shape == (B, n) and r_mat.g.shape == (B, m)
    assert r_pts.ot_eps.shape == (B,) and r_pts.converged.dtype == bool
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    for k in range(B):
        P_pot = pot_plan(a, b, C[k], 0.3)
        np.testing.assert_allclose(plan(r_mat.f[k], r_mat.g[k], C[k], a, b, 0.3), P_pot,
                                   atol=1e-10)
        np.testing.assert_allclose(plan(r_pts.f[k], r_pts.g[k], C[k], a, b, 0.3), P_pot,
                                   atol=1e-10)


def test_sinkhorn_unbalanced_fixed_point(rng):
    # The unbalanced updates' fixed point (sinkhorn.h): f = -lambda_a eps LSE_j(log b_j +
    # (g_j - C_ij)/eps), lambda = rho / (rho + eps); checked directly in NumPy.
    x, y = cloud(rng, 20, 25, 2)
    a = np.full(20, 1 / 20)
    b = np.full(25, 2 / 25)  # unequal masses: only an unbalanced problem accepts them
    eps, rho = 0.5, 2.0
    r = otgpu.sinkhorn(x, y, a=a, b=b, eps=eps, rho_a=rho, rho_b=rho, tol=1e-12)
    assert r.converged
    C = sqdist(x, y)
    lam = rho / (rho + eps)
    lse = lambda z, ax: np.log(np.exp(z).sum(ax))
    f_fp = -lam * eps * lse(np.log(b)[None, :] + (r.g[None, :] - C) / eps, 1)
    g_fp = -lam * eps * lse(np.log(a)[:, None] + (r.f[:, None] - C) / eps, 0)
    np.testing.assert_allclose(r.f, f_fp, atol=1e-9)
    np.testing.assert_allclose(r.g, g_fp, atol=1e-12)


def test_warm_start_from_converged_potentials_needs_one_check(rng):
    x, y = cloud(rng, 64, 64, 2)
    r = otgpu.sinkhorn(x, y, eps=0.1)
    f, g = r.numpy()
    w = otgpu.sinkhorn(x, y, eps=0.1, f_init=f, g_init=g)
    assert w.converged and w.iterations <= 10 < r.iterations
    assert w.ot_eps == pytest.approx(r.ot_eps, rel=1e-9)


def test_float32_inputs_give_float32_outputs(rng):
    x, y = cloud(rng, 30, 30, 3)
    r32 = otgpu.sinkhorn(x.astype(np.float32), y.astype(np.float32), eps=0.2)
    r64 = otgpu.sinkhorn(x.astype(np.float32).astype(np.float64),
                         y.astype(np.float32).astype(np.float64), eps=0.2)
    assert r32.f.dtype == np.float32 and r32.numpy()[0].dtype == np.float64
    # The CPU computes in fp64 either way: the same solve, rounded on the way out.
    np.testing.assert_array_equal(r32.numpy()[0], r64.numpy()[0])
    m = otgpu.barycentric_map(x.astype(np.float32), y.astype(np.float32), r32)
    assert m.dtype == np.float32


def test_derived_outputs_match_the_plan(rng):
    x, y = cloud(rng, 30, 40, 3)
    eps = 0.25
    r = otgpu.sinkhorn(x, y, eps=eps, tol=1e-11)
    a, b = np.full(30, 1 / 30), np.full(40, 1 / 40)
    C = sqdist(x, y)
    P = plan(r.f, r.g, C, a, b, eps)
    row = P.sum(1)
    np.testing.assert_allclose(otgpu.barycentric_map(x, y, r), (P @ y) / row[:, None],
                               atol=1e-10)
    np.testing.assert_allclose(otgpu.gradient(x, y, r), 2 * (row[:, None] * x - P @ y),
                               atol=1e-10)
    np.testing.assert_allclose(otgpu.gradient_x(x, y, r), otgpu.gradient(x, y, r))
    col = P.sum(0)
    np.testing.assert_allclose(otgpu.gradient(x, y, r, wrt="y"),
                               2 * (col[:, None] * y - P.T @ x), atol=1e-10)
    # Without a result, the derived outputs solve first with the options given.
    np.testing.assert_allclose(otgpu.barycentric_map(x, y, eps=eps, tol=1e-11),
                               otgpu.barycentric_map(x, y, r), atol=1e-12)
    with pytest.raises(TypeError, match="only accepted without a result"):
        otgpu.barycentric_map(x, y, r, eps=eps)


def test_gradient_is_the_derivative_of_ot_eps(rng):
    # Envelope theorem: d OT_eps / d x at the optimum = gradient_x (finite differences).
    x, y = cloud(rng, 8, 9, 2)
    eps = 0.3
    r = otgpu.sinkhorn(x, y, eps=eps, tol=1e-13)
    gx, gy = otgpu.gradient(x, y, r), otgpu.gradient(x, y, r, wrt="y")
    h = 1e-6
    for (arr, grad, which) in ((x, gx, 0), (y, gy, 1)):
        for (i, k) in ((0, 0), (3, 1)):
            plus, minus = arr.copy(), arr.copy()
            plus[i, k] += h
            minus[i, k] -= h
            args_p = (plus, y) if which == 0 else (x, plus)
            args_m = (minus, y) if which == 0 else (x, minus)
            fd = (otgpu.sinkhorn(*args_p, eps=eps, tol=1e-13).ot_eps
                  - otgpu.sinkhorn(*args_m, eps=eps, tol=1e-13).ot_eps) / (2 * h)
            assert grad[i, k] == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_sample_partners_follow_the_plan_rows(rng):
    x, y = cloud(rng, 3, 4, 2, shift=0.0)
    eps = 1.0
    r = otgpu.sinkhorn(x, y, eps=eps, tol=1e-12)
    P = plan(r.f, r.g, sqdist(x, y), np.full(3, 1 / 3), np.full(4, 1 / 4), eps)
    rows = P / P.sum(1, keepdims=True)
    draws = np.array([otgpu.sample_partners(x, y, r, seed=s) for s in range(3000)])
    assert draws.dtype == np.int64 and draws.shape == (3000, 3)
    for i in range(3):
        freq = np.bincount(draws[:, i], minlength=4) / 3000
        # 3000 draws: a binomial standard deviation <= 0.0092; 5 sigma.
        np.testing.assert_allclose(freq, rows[i], atol=0.046)
    np.testing.assert_array_equal(otgpu.sample_partners(x, y, r, seed=7),
                                  otgpu.sample_partners(x, y, r, seed=7))
    C = sqdist(x, y)
    np.testing.assert_array_equal(otgpu.sample_partners(cost=C, result=otgpu.sinkhorn(
        cost=C, eps=eps, tol=1e-12), seed=7), otgpu.sample_partners(x, y, r, seed=7))


def test_sinkhorn_divergence_matches_three_pot_solves(rng):
    x, y = cloud(rng, 25, 30, 2)
    a, b = np.full(25, 1 / 25), np.full(30, 1 / 30)
    eps = 0.3

    def ot_eps(p, q, u, v):
        C = sqdist(p, q)
        return ot_eps_of_plan(pot_plan(u, v, C, eps), C, u, v, eps)

    expect = ot_eps(x, y, a, b) - 0.5 * ot_eps(x, x, a, a) - 0.5 * ot_eps(y, y, b, b)
    got = otgpu.sinkhorn_divergence(x, y, eps=eps, tol=1e-11)
    assert isinstance(got, float) and got == pytest.approx(expect, rel=1e-7)
    xy = otgpu.sinkhorn(x, y, eps=eps, tol=1e-11)
    assert otgpu.sinkhorn_divergence(x, y, result=xy, eps=eps, tol=1e-11) == pytest.approx(
        expect, rel=1e-7)
    batched = otgpu.sinkhorn_divergence(np.stack([x, x]), np.stack([y, y]),
                                        eps=eps, tol=1e-11)
    assert batched.shape == (2,) and batched[0] == pytest.approx(expect, rel=1e-7)


def test_wasserstein_1d_matches_pot(rng):
    x, y = rng.normal(size=37), rng.normal(size=23) * 2
    a, b = rng.uniform(size=37), rng.uniform(size=23)
    for p in (1.0, 2.0, 3.5):
        assert otgpu.wasserstein_1d(x, y, a, b, p=p) == pytest.approx(
            ot.wasserstein_1d(x, y, a / a.sum(), b / b.sum(), p=p), rel=1e-10)
    xb, yb = rng.normal(size=(4, 10)), rng.normal(size=(4, 12))
    got = otgpu.wasserstein_1d(xb, yb, p=2.0)
    assert got.shape == (4,)
    for k in range(4):
        assert got[k] == pytest.approx(ot.wasserstein_1d(xb[k], yb[k], p=2.0), rel=1e-10)
    (i, j, mass, cost), = otgpu.monotone_coupling_1d(x, y, a, b, p=2.0)
    assert mass.sum() == pytest.approx(1.0) and cost == pytest.approx(
        ot.wasserstein_1d(x, y, a / a.sum(), b / b.sum(), p=2.0), rel=1e-10)
    assert cost == pytest.approx(float(np.sum(mass * (x[i] - y[j]) ** 2)), rel=1e-12)


def test_sliced_matches_pot_with_the_same_directions(rng):
    x, y = cloud(rng, 50, 60, 3)
    dirs = otgpu.sliced_directions(3, 32, seed=5)
    assert dirs.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=0), 1.0, atol=1e-12)
    r = otgpu.sliced_wasserstein(x, y, projections=32, seed=5, p=2.0, gradients=True)
    pot = ot.sliced_wasserstein_distance(x, y, projections=dirs, p=2)
    assert r.value == pytest.approx(pot, rel=1e-10)
    assert r.value_pp == pytest.approx(r.value ** 2, rel=1e-12)
    per = [ot.wasserstein_1d(x @ dirs[:, l], y @ dirs[:, l], p=2) for l in range(32)]
    np.testing.assert_allclose(r.per_direction, per, rtol=1e-10)
    explicit = otgpu.sliced_wasserstein(x, y, directions=dirs)
    assert explicit.value == pytest.approx(r.value, rel=1e-12)
    assert r.grad_x.shape == (50, 3) and r.grad_y.shape == (60, 3)
    # Finite differences of SW_2^2 in one coordinate (no ties in random data).
    h = 1e-6
    xp, xm = x.copy(), x.copy()
    xp[2, 1] += h
    xm[2, 1] -= h
    fd = (otgpu.sliced_wasserstein(xp, y, projections=32, seed=5).value_pp
          - otgpu.sliced_wasserstein(xm, y, projections=32, seed=5).value_pp) / (2 * h)
    assert r.grad_x[2, 1] == pytest.approx(fd, rel=1e-5)
    mx = otgpu.sliced_wasserstein(x, y, projections=32, seed=5, max_sliced=True)
    assert mx.value_pp == pytest.approx(max(per), rel=1e-10)


def test_gaussian_ot_matches_pot(rng):
    d = 3
    A1, A2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    S1, S2 = A1 @ A1.T + 0.1 * np.eye(d), A2 @ A2.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    r = otgpu.gaussian_ot(m1, S1, m2, S2, eps=0.0, want_map=True)
    W = ot.gaussian.bures_wasserstein_distance(m1, m2, S1, S2)
    assert r.w2_squared == pytest.approx(float(W) ** 2, rel=1e-8)
    A, _ = ot.gaussian.bures_wasserstein_mapping(m1, m2, S1, S2)
    np.testing.assert_allclose(r.map_matrix, A, atol=1e-8)
    assert r.entropic is None
    # Entropic value: closed form for 1-D Gaussians (Janati et al. 2020, sigma^2 = eps/2):
    # D = sqrt(4 s1 s2 + sigma^4); OT = dm^2 + s1 + s2 - D + sigma^2 (1 - log(2 sigma^2))
    # + sigma^2 log(D + sigma^2).
    s1, s2, eps = 1.5, 0.4, 0.3
    sig2 = eps / 2
    D = np.sqrt(4 * s1 * s2 + sig2 ** 2)
    expect = 1.0 + s1 + s2 - D + sig2 * (1 - np.log(2 * sig2)) + sig2 * np.log(D + sig2)
    e = otgpu.gaussian_ot(np.zeros(1), np.array([[s1]]), np.ones(1), np.array([[s2]]), eps=eps)
    assert e.entropic == pytest.approx(expect, rel=1e-10)
    batch = otgpu.gaussian_ot(np.stack([m1, m2]), S1, m2, S2)
    assert batch.w2_squared.shape == (2,)
    assert batch.w2_squared[0] == pytest.approx(r.w2_squared, rel=1e-12)
