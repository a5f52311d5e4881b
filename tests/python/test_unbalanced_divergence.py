"""The unbalanced Sinkhorn divergence of `otgpu sinkhorn --divergence` (issue 13) against
an independent float64 NumPy reference.

The reference solves each unbalanced problem by plain alternating log-domain updates
to the floating-point floor and evaluates the PRIMAL objective
    OT_eps(a, b) = <P, C> + eps KL(P | a x b) + rho KL(P 1 | a) + rho KL(P^T 1 | b),
    KL(p | q) = sum p log(p / q) - p + q,
at its plan (the library reports the dual: a different formula), then
    S = OT_eps(a, b) - OT_eps(a, a) / 2 - OT_eps(b, b) / 2 + eps / 2 (m(a) - m(b))^2
(Sejourne et al. 2019). Where POT is importable its unbalanced plan
(ot.unbalanced.sinkhorn_unbalanced, reg_type "kl": the same problem) must equal the
reference plan, which pins the reference itself.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_unbalanced_divergence
"""

import os
import unittest
import warnings

import numpy as np

from otgpu_testutil import CliTestCase, logsumexp, sqeuclidean

BACKEND = os.environ.get("OTGPU_TEST_BACKEND", "cpu")

try:
    import ot.unbalanced as pot_unbalanced
except ImportError:  # optional cross-check only
    pot_unbalanced = None


def gkl(p, q):
    pos = p > 0
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])) - p.sum() + q.sum())


def unbalanced_plan(a, b, C, eps, rho):
    lam = rho / (rho + eps)
    la, lb = np.log(a), np.log(b)
    f, g = np.zeros(len(a)), np.zeros(len(b))
    for _ in range(100000):
        f_new = -lam * eps * logsumexp(lb[None, :] + (g[None, :] - C) / eps, axis=1)
        g = -lam * eps * logsumexp(la[:, None] + (f_new[:, None] - C) / eps, axis=0)
        done = np.max(np.abs(f_new - f)) <= 1e-14 * (1 + np.max(np.abs(f_new)))
        f = f_new
        if done:
            break
    else:
        raise AssertionError("reference did not converge")
    return np.exp(la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - C) / eps)


def unbalanced_value(a, b, C, eps, rho):
    P = unbalanced_plan(a, b, C, eps, rho)
    return float((P * C).sum() + eps * gkl(P, np.outer(a, b)) + rho * gkl(P.sum(1), a)
                 + rho * gkl(P.sum(0), b))


def reference_divergence(x, y, a, b, eps, rho):
    ab = unbalanced_value(a, b, sqeuclidean(x, y), eps, rho)
    aa = unbalanced_value(a, a, sqeuclidean(x, x), eps, rho)
    bb = unbalanced_value(b, b, sqeuclidean(y, y), eps, rho)
    return ab - 0.5 * (aa + bb) + 0.5 * eps * (a.sum() - b.sum()) ** 2


class UnbalancedDivergence(CliTestCase):
    def divergence(self, x, y, a, b, eps, rho_a, rho_b=None):
        rho_b = rho_a if rho_b is None else rho_b
        out = self.run_json(["sinkhorn", "--x", self.save("x.npy", x), "--y",
                             self.save("y.npy", y), "--a", self.save("a.npy", a), "--b",
                             self.save("b.npy", b), "--eps", repr(eps), "--rho-a", repr(rho_a),
                             "--rho-b", repr(rho_b), "--tol", "1e-12", "--divergence",
                             "--backend", BACKEND])
        return [p["sinkhorn_divergence"] for p in out["problems"]]

    def check(self, x, y, a, b, eps, rho):
        want = reference_divergence(x, y, a, b, eps, rho)
        got = self.divergence(x, y, a, b, eps, rho)[0]
        self.assertGreaterEqual(want, 0.0)
        self.assertGreaterEqual(got, 0.0)
        self.assertAlmostEqual(got, want, delta=1e-8 * max(1.0, abs(want)))
        return got

    def test_issue_case_same_points_four_times_the_mass(self):
        # issue 13: same points, b = 4 a, eps = 1, rho = 1 gave S < 0 (no mass term).
        rng = np.random.default_rng(13)
        x = rng.normal(size=(20, 2))
        a = np.full(20, 1 / 20)
        got = self.check(x, x, a, 4 * a, 1.0, 1.0)
        # The mass term alone is eps/2 * 3^2 = 4.5: without it the value is negative.
        self.assertLess(got - 4.5, 0.0)

    def test_different_clouds_unequal_mass(self):
        rng = np.random.default_rng(7)
        x = rng.normal(size=(15, 3))
        y = rng.normal(size=(11, 3)) + 0.5
        a = rng.uniform(0.1, 1.0, size=15)
        b = rng.uniform(0.1, 1.0, size=11)
        a *= 0.7 / a.sum()
        b *= 2.5 / b.sum()
        self.check(x, y, a, b, 0.5, 2.0)

    def test_small_eps_and_mass_below_one(self):
        rng = np.random.default_rng(3)
        x = rng.uniform(size=(12, 2))
        y = rng.uniform(size=(9, 2))
        a = np.full(12, 0.3 / 12)
        b = np.full(9, 0.05 / 9)
        self.check(x, y, a, b, 0.05, 0.5)

    def test_self_divergence_is_zero(self):
        rng = np.random.default_rng(5)
        x = rng.normal(size=(16, 2))
        a = rng.uniform(0.2, 1.0, size=16) * 3.0
        got = self.divergence(x, x, a, a, 0.3, 0.7)[0]
        self.assertAlmostEqual(got, 0.0, delta=1e-9)

    def test_unequal_penalties_are_rejected(self):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(5, 2))
        a = np.full(5, 0.2)
        args = ["sinkhorn", "--x", self.save("x.npy", x), "--y", self.save("y.npy", x),
                "--a", self.save("a.npy", a), "--b", self.save("b.npy", 2 * a), "--eps",
                "1", "--rho-a", "1", "--rho-b", "2", "--divergence", "--backend", BACKEND]
        self.assert_clean_failure(args, "rho_a", "rho_b")

    @unittest.skipIf(pot_unbalanced is None, "POT is not installed")
    def test_reference_plan_equals_pot(self):
        rng = np.random.default_rng(11)
        x = rng.normal(size=(10, 2))
        y = rng.normal(size=(8, 2))
        a = np.full(10, 0.1)
        b = np.full(8, 0.5)
        C = sqeuclidean(x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pot = pot_unbalanced.sinkhorn_unbalanced(a, b, C, 0.5, 2.0, reg_type="kl",
                                                     numItermax=100000, stopThr=1e-15)
        ours = unbalanced_plan(a, b, C, 0.5, 2.0)
        np.testing.assert_allclose(pot, ours, rtol=1e-9, atol=1e-15)


if __name__ == "__main__":
    unittest.main()
