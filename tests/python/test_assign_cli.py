"""End-to-end tests of `otgpu assign`: costs against scipy.optimize.linear_sum_assignment
(geometric, integer, tied, rectangular both ways, forbidden pairs), the permutation
and the dual certificate written by the command checked here in numpy, and bad input.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_assign_cli   (from tests/python)
"""

import unittest

import numpy as np

from otgpu_testutil import CliTestCase, euclidean, sqeuclidean

try:
    from scipy.optimize import linear_sum_assignment
except ImportError:  # pragma: no cover - optional oracle
    linear_sum_assignment = None


def scipy_cost(C):
    """The optimal cost of one [n, m] problem by scipy (+inf = forbidden there too)."""
    C = np.asarray(C, dtype=np.float64)
    r, c = linear_sum_assignment(C)
    return C[r, c].sum()


@unittest.skipIf(linear_sum_assignment is None, "scipy is not installed")
class AssignAgainstScipy(CliTestCase):
    def solve(self, C, extra=()):
        """Runs the command on cost C ([n, m] or [K, n, m]); returns (json, perm, cols,
        u, v)."""
        c = self.save("c.npy", C)
        out = [self.path(f) for f in ("p.npy", "q.npy", "u.npy", "v.npy")]
        j = self.run_json(["assign", "--cost", c, "--backend", "cpu", "--out", out[0],
                           "--col-out", out[1], "--u-out", out[2], "--v-out", out[3], *extra])
        return (j, *[np.load(p) for p in out])

    def check(self, C, rtol=1e-12):
        C = np.asarray(C)
        j, perm, cols, u, v = self.solve(C)
        batched = C.ndim == 3
        Cb = C if batched else C[None]
        perm, cols, u, v = (a if batched else a[None] for a in (perm, cols, u, v))
        self.assertEqual(perm.dtype, np.int64)
        K, n, m = Cb.shape
        self.assertEqual(perm.shape, (K, n))
        for k in range(K):
            Ck = Cb[k].astype(np.float64)
            ref = scipy_cost(Ck)
            got = j["problems"][k]["cost"]
            self.assertLessEqual(abs(got - ref), rtol * max(1.0, abs(ref)), (k, got, ref))
            rows = np.flatnonzero(perm[k] >= 0)
            self.assertEqual(len(rows), min(n, m))
            self.assertEqual(len(np.unique(perm[k][rows])), len(rows))
            np.testing.assert_array_equal(cols[k][perm[k][rows]], rows)
            self.assertAlmostEqual(Ck[rows, perm[k][rows]].sum(), got, delta=1e-9 * max(1, abs(ref)))
            # The certificate, recomputed: u_i + v_j <= C_ij on allowed pairs, equality on
            # matched pairs, larger side <= 0, dual objective = cost.
            slack = Ck - u[k][:, None] - v[k][None, :]
            tol = 1e-9 * max(1.0, np.abs(Ck[np.isfinite(Ck)]).max())
            self.assertGreaterEqual(slack[np.isfinite(Ck)].min(), -tol)
            self.assertLessEqual(np.abs(slack[rows, perm[k][rows]]).max(), tol)
            if n < m:
                self.assertLessEqual(v[k].max(), tol)
            if n > m:
                self.assertLessEqual(u[k].max(), tol)
            self.assertLessEqual(abs(got - (u[k].sum() + v[k].sum())), tol * n)
            self.assertLessEqual(abs(j["problems"][k]["gap"]), tol * n)
        return j

    def test_geometric_costs(self):
        rng = np.random.default_rng(1)
        for n, m, d in ((100, 100, 2), (80, 120, 5), (150, 60, 3)):
            x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
            with self.subTest(n=n, m=m, d=d):
                self.check(sqeuclidean(x, y))
                self.check(euclidean(x, y))

    def test_float32_batch(self):
        rng = np.random.default_rng(2)
        j = self.check(rng.random((4, 90, 90)).astype(np.float32))
        self.assertEqual(j["B"], 4)

    def test_integer_and_tied_costs(self):
        rng = np.random.default_rng(3)
        self.check(rng.integers(0, 5, (3, 70, 70)).astype(np.float64))
        self.check(rng.integers(0, 1000, (64, 50)).astype(np.float64))
        self.check(np.ones((30, 30)))
        self.check(np.add.outer(np.arange(40.0), np.arange(40.0)))  # every matching ties

    def test_forbidden_pairs(self):
        rng = np.random.default_rng(4)
        C = rng.random((60, 60))
        C[rng.random((60, 60)) < 0.5] = np.inf
        np.fill_diagonal(C, rng.random(60) + 5)  # keeps it feasible
        self.check(C)
        R = rng.random((40, 70))
        R[rng.random((40, 70)) < 0.7] = np.inf
        R[np.arange(40), np.arange(40) + 5] = 3.0
        self.check(R)
        self.check(R.T.copy())

    def test_point_clouds_match_the_matrix(self):
        rng = np.random.default_rng(5)
        x, y = rng.standard_normal((3, 50, 4)), rng.standard_normal((3, 50, 4))
        xp, yp = self.save("x.npy", x), self.save("y.npy", y)
        for kind, f in (("sqeuclidean", sqeuclidean), ("euclidean", euclidean),
                        ("neg_dot", lambda a, b: -a @ b.T)):
            with self.subTest(kind=kind):
                j = self.run_json(["assign", "--x", xp, "--y", yp, "--cost-kind", kind,
                                   "--backend", "cpu"])
                self.assertEqual(j["options"]["cost_kind"], kind)
                self.assertEqual(j["d"], 4)
                for k in range(3):
                    ref = scipy_cost(f(x[k], y[k]))
                    self.assertAlmostEqual(j["problems"][k]["cost"], ref, delta=1e-9 * abs(ref))


class AssignBadInput(CliTestCase):
    def test_errors_are_one_line(self):
        C = np.random.default_rng(0).random((2, 3, 3))
        c = self.save("c.npy", C)
        bad = C.copy()
        bad[1, 2, 0] = np.nan
        self.assert_clean_failure(["assign", "--cost", self.save("nan.npy", bad)], "nan.npy",
                                  "[1, 2, 0]", "nan")
        bad[1, 2, 0] = -np.inf
        self.assert_clean_failure(["assign", "--cost", self.save("ninf.npy", bad)], "-inf")
        inf_row = C.copy()
        inf_row[1, 0, :] = np.inf
        self.assert_clean_failure(["assign", "--cost", self.save("inf.npy", inf_row)],
                                  "problem 1", "row 0", "infeasible")
        x = self.save("x.npy", np.zeros((4, 3)))
        y = self.save("y.npy", np.zeros((4, 2)))
        self.assert_clean_failure(["assign", "--x", x, "--y", y], "y.npy", "d = 2", "d = 3")
        self.assert_clean_failure(["assign", "--x", x], "--y", "required")
        self.assert_clean_failure(["assign", "--cost", c, "--x", x], "--cost", "--x")
        self.assert_clean_failure(["assign", "--cost", c, "--cost-kind", "euclidean"],
                                  "--cost-kind")
        self.assert_clean_failure(["assign", "--x", x, "--y", x, "--cost-kind", "l1"],
                                  "--cost-kind", "l1")
        self.assert_clean_failure(["assign", "--cost", self.save("e.npy", np.zeros((0, 3, 3)))],
                                  "e.npy", "empty", "K = 0")
        self.assert_clean_failure(["assign", "--cost", c, "--out", c], "--out")
        self.assert_clean_failure(["assign", "--cost", c, "--backend", "tpu"], "tpu")


if __name__ == "__main__":
    unittest.main()
