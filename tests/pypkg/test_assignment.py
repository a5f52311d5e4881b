"""assignment, couple, coupling_pairs, minibatch_ot and minibatch_rows against
independent oracles: scipy.optimize.linear_sum_assignment (exact matchings), the dual
certificate (u_i + v_j <= C_ij, equality on matched pairs), POT (entropic values),
closed forms, and the `otgpu assign` / `otgpu couple` commands (the same C++ through
another front end)."""

import subprocess

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import otgpu
from conftest import sqdist
from test_binding import otgpu_cli


def scipy_cost(C):
    r, c = linear_sum_assignment(C)
    return C[r, c].sum(), r, c


def matched_cost(C, row_to_col):
    rows = np.flatnonzero(row_to_col >= 0)
    return C[rows, row_to_col[rows]].sum()


def check_certificate(C, res_u, res_v, row_to_col, tol=1e-9):
    slack = C - res_u[:, None] - res_v[None, :]
    assert slack[np.isfinite(C)].min() >= -tol
    rows = np.flatnonzero(row_to_col >= 0)
    np.testing.assert_allclose(slack[rows, row_to_col[rows]], 0.0, atol=tol)


def test_square_batch_matches_scipy(rng):
    C = rng.random((3, 12, 12))
    r = otgpu.assignment(cost=C, backend="cpu")
    assert r.row_to_col.shape == (3, 12) and r.row_to_col.dtype == np.int64
    assert r.u.shape == (3, 12) and r.v.shape == (3, 12) and not r.asynchronous
    for k in range(3):
        cost, rows, cols = scipy_cost(C[k])
        np.testing.assert_array_equal(r.row_to_col[k][rows], cols)  # continuous: unique
        np.testing.assert_array_equal(r.col_to_row[k][cols], rows)
        assert r.cost[k] == pytest.approx(cost, rel=1e-12)
        assert r.reports[k]["cost"] == pytest.approx(cost, rel=1e-12)
        check_certificate(C[k], r.u[k], r.v[k], r.row_to_col[k])
    assert np.all(np.abs(r.gap) < 1e-9) and r.gap.shape == (3,)
    assert r.iterations.dtype == np.int64


@pytest.mark.parametrize("n,m", [(6, 10), (10, 6)])
def test_rectangular_matches_scipy(rng, n, m):
    C = rng.random((n, m))
    r = otgpu.assignment(cost=C)
    cost, rows, cols = scipy_cost(C)
    assert r.row_to_col.shape == (n,) and r.col_to_row.shape == (m,)
    assert isinstance(r.cost, float) and r.cost == pytest.approx(cost, rel=1e-12)
    assert matched_cost(C, r.row_to_col) == pytest.approx(cost, rel=1e-12)
    assert (r.row_to_col >= 0).sum() == min(n, m) == (r.col_to_row >= 0).sum()
    # The larger side's potentials are <= 0 (the dual of "matched at most once").
    assert (r.v if m > n else r.u).max() <= 1e-12


@pytest.mark.parametrize("kind", ["sqeuclidean", "euclidean", "neg_dot"])
def test_point_clouds_and_fp32(rng, kind):
    x, y = rng.normal(size=(2, 15, 3)), rng.normal(size=(2, 15, 3))
    for dt in (np.float64, np.float32):
        r = otgpu.assignment(x.astype(dt), y.astype(dt), cost_kind=kind)
        xs, ys = x.astype(dt).astype(np.float64), y.astype(dt).astype(np.float64)
        for k in range(2):
            C = {"sqeuclidean": sqdist(xs[k], ys[k]),
                 "euclidean": np.sqrt(sqdist(xs[k], ys[k])),
                 "neg_dot": -xs[k] @ ys[k].T}[kind]
            cost, _, _ = scipy_cost(C)
            assert matched_cost(C, r.row_to_col[k]) == pytest.approx(cost, rel=1e-6, abs=1e-6)


def test_forbidden_pairs_and_infeasible(rng):
    C = rng.random((8, 8))
    C[0, :4] = np.inf
    C[np.arange(8), np.arange(8)] = np.inf
    r = otgpu.assignment(cost=C)
    assert np.all(np.isfinite(C[np.arange(8), r.row_to_col]))
    finite = np.where(np.isfinite(C), C, 1e9)
    assert r.cost == pytest.approx(scipy_cost(finite)[0], rel=1e-12)
    C[:2, :] = np.inf
    C[:2, 0] = 1.0  # rows 0 and 1 can only take column 0
    with pytest.raises(otgpu.Infeasible, match="infeasible") as info:
        otgpu.assignment(cost=C)
    assert isinstance(info.value, ValueError) and isinstance(info.value, otgpu.InvalidArgument)


def test_assignment_errors(rng):
    with pytest.raises(otgpu.InvalidArgument, match="not both"):
        otgpu.assignment(rng.random((3, 2)), rng.random((3, 2)), cost=rng.random((3, 3)))
    with pytest.raises(otgpu.NonFiniteInput):
        otgpu.assignment(cost=np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(TypeError, match="unexpected keyword argument 'eps'"):
        otgpu.assignment(cost=rng.random((3, 3)), eps=1.0)
    with pytest.raises(otgpu.InvalidArgument, match="cost_kind"):
        otgpu.assignment(rng.random((3, 2)), rng.random((3, 2)), cost_kind="cosine")


def pairs_cost(x0, x1, i, j):
    return ((x0[i] - x1[j]) ** 2).sum(-1).mean()


def test_couple_exact_is_the_optimal_permutation(rng):
    x0, x1 = rng.normal(size=(4, 32, 2)), rng.normal(size=(4, 32, 2)) + 1
    c = otgpu.couple(x0, x1, method="exact")
    assert c.i.shape == (4, 32) and c.pairs == 32 and c.batch == 4
    for k in range(4):
        np.testing.assert_array_equal(c.i[k], np.arange(32))
        assert np.array_equal(np.sort(c.j[k]), np.arange(32))
        cost, _, _ = scipy_cost(sqdist(x0[k], x1[k]))
        assert c.pair_cost[k] == pytest.approx(cost / 32, rel=1e-12)
        assert c.ot[k] == pytest.approx(cost / 32, rel=1e-12)
    assert c.converged.all() and c.eps.max() == 0.0


def test_couple_sinkhorn_pairs_are_plan_draws(rng):
    x0, x1 = rng.normal(size=(64, 2)), rng.normal(size=(64, 2)) + 1
    c = otgpu.couple(x0, x1, eps=0.05, sinkhorn={"tol": 1e-8}, seed=3)
    assert c.i.shape == (64,) and c.converged and c.iterations > 0
    # Joint sampling without replacement: distinct pairs in increasing (i, j) order.
    keys = c.i * 64 + c.j
    assert np.all(np.diff(keys) > 0)
    # The pairs follow the plan: cheaper than independent pairs, and the reported
    # OT_eps is the one of the same Sinkhorn solve.
    indep = sqdist(x0, x1).mean()
    assert c.pair_cost < 0.5 * indep
    r = otgpu.sinkhorn(x0, x1, eps=0.05, eps_relative=True, tol=1e-8)
    assert c.ot == pytest.approx(r.ot_eps, rel=1e-6)
    assert c.eps == pytest.approx(r.eps, rel=1e-12)
    # Reproducible by seed; another seed draws other pairs.
    again = otgpu.couple(x0, x1, eps=0.05, sinkhorn={"tol": 1e-8}, seed=3)
    np.testing.assert_array_equal(c.j, again.j)
    other = otgpu.couple(x0, x1, eps=0.05, sinkhorn={"tol": 1e-8}, seed=4)
    assert not np.array_equal(np.stack([c.i, c.j]), np.stack([other.i, other.j]))


def test_couple_per_row_and_counts(rng):
    x0, x1 = rng.normal(size=(2, 20, 3)), rng.normal(size=(2, 30, 3))
    c = otgpu.couple(x0, x1, pairs="per_row")
    np.testing.assert_array_equal(c.i, np.tile(np.arange(20), (2, 1)))
    assert c.j.max() < 30
    assert otgpu.coupling_pairs(20, 30, pairs="per_row") == 20
    assert otgpu.coupling_pairs(20, 30, num_pairs=7) == 7
    c = otgpu.couple(x0, x1, num_pairs=7, replacement=True)
    assert c.i.shape == (2, 7)
    with pytest.raises(otgpu.ShapeError):
        otgpu.couple(x0, x1, method="exact")  # bs0 != bs1
    with pytest.raises(otgpu.InvalidArgument, match="method"):
        otgpu.couple(x0, x1, method="greedy")
    with pytest.raises(otgpu.InvalidArgument, match="pairs"):
        otgpu.couple(x0, x1, pairs="all")
    with pytest.raises(TypeError, match="sinkhorn must be a dict"):
        otgpu.couple(x0, x1, sinkhorn=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tol'"):
        otgpu.couple(x0, x1, tol=1e-6)  # Sinkhorn options go in sinkhorn={...}
    with pytest.raises(otgpu.InvalidArgument, match="seed"):
        otgpu.couple(x0, x1, seed=-1)


def test_minibatch_exact_against_scipy(rng):
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(50, 2)) + 0.5
    r = otgpu.minibatch_ot(x, y, k=5, bs=8, method="exact", seed=7)
    assert r.rows_x.shape == (5, 8) and r.values.shape == (5,)
    np.testing.assert_array_equal(r.rows_x, otgpu.minibatch_rows(40, 8, 5, 7, 0))
    np.testing.assert_array_equal(r.rows_y, otgpu.minibatch_rows(50, 8, 5, 7, 1))
    vals = []
    gx = np.zeros_like(x)
    for k in range(5):
        xb, yb = x[r.rows_x[k]], y[r.rows_y[k]]
        cost, rows, cols = scipy_cost(sqdist(xb, yb))
        vals.append(cost / 8)
        # d value_k / d x_p = (1/bs) 2 (x_p - y_s(p)), averaged over the K batches.
        gx[r.rows_x[k][rows]] += 2 * (xb[rows] - yb[cols]) / 8 / 5
    np.testing.assert_allclose(r.values, vals, rtol=1e-12)
    assert r.mean == pytest.approx(np.mean(vals), rel=1e-12)
    assert r.std_error == pytest.approx(np.std(vals, ddof=1) / np.sqrt(5), rel=1e-10)
    np.testing.assert_allclose(r.grad_x, gx, atol=1e-12)
    assert r.grad_y.shape == y.shape and r.converged


def test_minibatch_sinkhorn_and_errors(rng):
    x, y = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    r = otgpu.minibatch_ot(x.astype(np.float32), y.astype(np.float32), k=1, bs=30,
                           eps=0.1, eps_relative=False, sinkhorn={"tol": 1e-9})
    # K = 1 with bs = N is the full problem: OT_eps of the solve, standard error 0.
    full = otgpu.sinkhorn(x, y, eps=0.1, tol=1e-9)
    assert r.mean == pytest.approx(full.ot_eps, rel=1e-5) and r.std_error == 0.0
    assert r.grad_x.dtype == np.float32
    np.testing.assert_allclose(r.grad_x, otgpu.gradient(x, y, full) / 1.0, atol=1e-4)
    no_grad = otgpu.minibatch_ot(x, y, k=2, bs=5, gradient=False)
    assert no_grad.grad_x is None
    with pytest.raises(otgpu.ShapeError):
        otgpu.minibatch_ot(x, y, bs=31)
    with pytest.raises(otgpu.InvalidArgument):
        otgpu.minibatch_ot(x, y, k=2, bs=5, method="exact", debiased=True)
    with pytest.raises(otgpu.InvalidArgument, match="method"):
        otgpu.minibatch_ot(x, y, method="lp")


def has_command(name):
    cli = otgpu_cli()
    if cli is None:
        return False
    return subprocess.run([cli, name, "--help"], capture_output=True).returncode == 0


@pytest.mark.skipif(not has_command("assign"), reason="no otgpu command with `assign`")
def test_same_matching_as_the_assign_command(rng, tmp_path):
    C = rng.random((3, 9, 11))
    np.save(tmp_path / "c.npy", C)
    subprocess.run([otgpu_cli(), "assign", "--cost", tmp_path / "c.npy", "--backend", "cpu",
                    "--out", tmp_path / "r.npy", "--u-out", tmp_path / "u.npy"], check=True,
                   capture_output=True, timeout=120)
    r = otgpu.assignment(cost=C, backend="cpu")
    np.testing.assert_array_equal(r.row_to_col, np.load(tmp_path / "r.npy"))
    np.testing.assert_array_equal(r.u, np.load(tmp_path / "u.npy"))


@pytest.mark.skipif(not has_command("couple"), reason="no otgpu command with `couple`")
def test_same_pairs_as_the_couple_command(rng, tmp_path):
    x0, x1 = rng.normal(size=(2, 24, 2)), rng.normal(size=(2, 24, 2))
    np.save(tmp_path / "x0.npy", x0)
    np.save(tmp_path / "x1.npy", x1)
    subprocess.run([otgpu_cli(), "couple", "--x0", tmp_path / "x0.npy", "--x1",
                    tmp_path / "x1.npy", "--seed", "5", "--backend", "cpu", "--pairs-out",
                    tmp_path / "p.npy"], check=True, capture_output=True, timeout=120)
    c = otgpu.couple(x0, x1, seed=5, backend="cpu")
    p = np.load(tmp_path / "p.npy")
    np.testing.assert_array_equal(c.i, p[..., 0])
    np.testing.assert_array_equal(c.j, p[..., 1])
