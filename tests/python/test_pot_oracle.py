"""Cross-checks `otgpu sinkhorn` against POT (Python Optimal Transport), an
independent implementation: entropic value, transport cost, barycentric map and
plan, for balanced problems (plain, weighted, batched, n != m, d in {1, 2, 5},
Euclidean cost, cost-matrix input, float32 files, small eps) and an unbalanced one.

Exits with 77 (ctest SKIP_RETURN_CODE) when POT is not installed.
Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_pot_oracle   (from tests/python)
Set OTGPU_TEST_BACKEND=cpu|cuda|auto (default cpu: the fp64 reference is what the 1e-6
tolerances below are for; the fp32 GPU backend is compared with it in tests/gpu).
"""

import os
import sys
import warnings

from otgpu_testutil import (SKIP_RETURN_CODE, CliTestCase, entropic_value, euclidean,
                            plan_from_potentials, sqeuclidean)

try:
    import ot  # noqa: F401
    import ot.unbalanced  # noqa: F401
except ImportError:
    print("test_pot_oracle: POT ('import ot') is not installed; skipping", file=sys.stderr)
    sys.exit(SKIP_RETURN_CODE)

import numpy as np

BACKEND = os.environ.get("OTGPU_TEST_BACKEND", "cpu")

# Our solver stops at an L1 marginal error of 1e-11; POT runs to its floor. At that
# point both are within ~1e-10 of the exact optimum, so 1e-6 leaves room only for
# the conditioning of the problem, not for a wrong formula or a wrong eps.
RTOL = 1e-6


def pot_plan(a, b, C, eps):
    """POT's balanced entropic plan, log-domain, iterated to convergence."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", numItermax=200000,
                        stopThr=1e-14)
    # The oracle itself must have converged, or the comparison means nothing.
    assert np.abs(P.sum(1) - a).sum() < 1e-10, "POT did not converge (rows)"
    assert np.abs(P.sum(0) - b).sum() < 1e-10, "POT did not converge (columns)"
    return P


class PotOracle(CliTestCase):
    def run_solver(self, inputs, eps, *extra, batched=False, points=True):
        """Runs otgpu on the given input files; returns (json, f, g, map or None)."""
        outs = {"f": self.path("f.npy"), "g": self.path("g.npy")}
        if points:
            outs["map"] = self.path("map.npy")
        args = ["sinkhorn", *inputs, "--eps", repr(eps), "--tol", "1e-11", "--max-iter",
                "200000", "--backend", BACKEND, *extra]
        for k, p in outs.items():
            args += [f"--{k}-out", p]
        out = self.run_json(args, timeout=300)
        for p in out["problems"]:
            self.assertTrue(p["converged"], p)
        f, g = np.load(outs["f"]), np.load(outs["g"])
        T = np.load(outs["map"]) if points else None
        if not batched:
            f, g = f[None], g[None]
            T = T[None] if points else None
        return out, f, g, T

    def compare(self, report, f, g, C, a, b, eps, y=None, T=None, rtol=RTOL):
        P = pot_plan(a, b, C, eps)
        self.assertAlmostEqual(report["eps"], eps, delta=1e-14 * eps)
        ref_value = entropic_value(P, C, a, b, eps)
        ref_cost = float(np.sum(P * C))
        self.assertAlmostEqual(report["ot_eps"], ref_value, delta=rtol * abs(ref_value),
                               msg="ot_eps vs POT")
        self.assertAlmostEqual(report["transport_cost"], ref_cost, delta=rtol * abs(ref_cost),
                               msg="transport_cost vs POT")
        ours = plan_from_potentials(f, g, C, a, b, eps)
        np.testing.assert_allclose(ours, P, rtol=0, atol=rtol * P.max(), err_msg="plan vs POT")
        if T is not None:
            ref_T = (P @ y) / P.sum(1)[:, None]
            scale = np.abs(y).max()
            np.testing.assert_allclose(T, ref_T, rtol=0, atol=rtol * scale,
                                       err_msg="barycentric map vs POT")

    def points_case(self, n, m, d, eps, seed, weighted=False, cost="sqeuclidean",
                    dtype=np.float64, rtol=RTOL):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, d)).astype(dtype)
        y = (rng.normal(size=(m, d)) * 0.8 + 0.3).astype(dtype)
        inputs = ["--x", self.save("x.npy", x), "--y", self.save("y.npy", y), "--cost", cost]
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
        if weighted:
            a = rng.uniform(0.05, 1.0, n)
            a /= a.sum()
            b = rng.uniform(0.05, 1.0, m)
            b /= b.sum()
            inputs += ["--a", self.save("a.npy", a), "--b", self.save("b.npy", b)]
        out, f, g, T = self.run_solver(inputs, eps)
        if dtype == np.float32 and out["backend"] == "cuda":
            # The GPU may compute float32 inputs in float32 arithmetic (the CPU
            # reference accumulates in float64 and is held to RTOL).
            rtol = 5e-5
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        C = sqeuclidean(x64, y64) if cost == "sqeuclidean" else euclidean(x64, y64)
        self.compare(out["problems"][0], f[0], g[0], C, a, b, eps, y64, T[0], rtol=rtol)

    def test_plain(self):
        self.points_case(30, 30, 2, eps=0.5, seed=1)

    def test_weighted_n_ne_m_d5(self):
        self.points_case(40, 25, 5, eps=1.0, seed=2, weighted=True)

    def test_d1(self):
        self.points_case(35, 20, 1, eps=0.05, seed=3, weighted=True)

    def test_euclidean(self):
        self.points_case(25, 31, 2, eps=0.1, seed=4, cost="euclidean")

    def test_float32_files(self):
        self.points_case(30, 22, 5, eps=0.8, seed=5, dtype=np.float32)

    def test_batched(self):
        rng = np.random.default_rng(6)
        B, n, m, d, eps = 3, 18, 27, 2, 0.3
        x = rng.normal(size=(B, n, d))
        y = rng.normal(size=(B, m, d)) + np.array([0.0, 0.5, 1.0])[:, None, None]
        a = rng.uniform(0.1, 1.0, (B, n))
        a /= a.sum(1, keepdims=True)
        b = np.full(m, 1.0 / m)  # shared by the batch
        out, f, g, T = self.run_solver(["--x", self.save("x.npy", x), "--y",
                                        self.save("y.npy", y), "--a", self.save("a.npy", a),
                                        "--b", self.save("b.npy", b)], eps, batched=True)
        self.assertEqual(len(out["problems"]), B)
        for i in range(B):
            with self.subTest(problem=i):
                self.compare(out["problems"][i], f[i], g[i], sqeuclidean(x[i], y[i]), a[i], b,
                             eps, y[i], T[i])

    def test_cost_matrix(self):
        rng = np.random.default_rng(7)
        n, m, eps = 21, 16, 0.2
        C = rng.uniform(0.0, 3.0, (n, m))
        a = rng.uniform(0.1, 1.0, n)
        a /= a.sum()
        out, f, g, _ = self.run_solver(["--cost-matrix", self.save("C.npy", C), "--a",
                                        self.save("a.npy", a)], eps, points=False)
        self.compare(out["problems"][0], f[0], g[0], C, a, np.full(m, 1.0 / m), eps)

    def test_small_eps_relative(self):
        rng = np.random.default_rng(8)
        n, m, d = 14, 11, 2
        x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
        C = sqeuclidean(x, y)
        eps = 1e-3 * C.mean()
        # Epsilon scaling gets there in a few hundred iterations instead of ~1e5.
        out, f, g, T = self.run_solver(["--x", self.save("x.npy", x), "--y",
                                        self.save("y.npy", y)], 1e-3, "--eps-relative",
                                       "--eps-init", "1.0", "--eps-decay", "0.9")
        self.compare(out["problems"][0], f[0], g[0], C, np.full(n, 1.0 / n),
                     np.full(m, 1.0 / m), eps, y, T[0])

    def test_small_eps_library_schedule_and_overrelaxation(self):
        # No schedule or acceleration flags: the library's eps schedule and the
        # over-relaxed iteration must land on POT's plan (same fixed point).
        rng = np.random.default_rng(18)
        n, m, d = 30, 26, 2
        x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
        C = sqeuclidean(x, y)
        eps = 1e-3 * C.mean()
        out, f, g, T = self.run_solver(["--x", self.save("x.npy", x), "--y",
                                        self.save("y.npy", y)], 1e-3, "--eps-relative")
        self.compare(out["problems"][0], f[0], g[0], C, np.full(n, 1.0 / n),
                     np.full(m, 1.0 / m), eps, y, T[0])

    def test_divergence_against_three_pot_solves(self):
        # S_eps = OT_eps(a,b) - OT_eps(a,a)/2 - OT_eps(b,b)/2, each term from POT's plan;
        # ours runs the symmetric update on the self terms.
        rng = np.random.default_rng(19)
        n, m, d, eps = 40, 33, 3, 1.0
        x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.4
        a = rng.uniform(0.5, 1.5, n)
        a /= a.sum()
        b = np.full(m, 1.0 / m)
        out = self.run_json(["sinkhorn", "--x", self.save("x.npy", x), "--y",
                             self.save("y.npy", y), "--a", self.save("a.npy", a), "--eps",
                             repr(eps), "--tol", "1e-11", "--divergence", "--backend", BACKEND],
                            timeout=300)
        terms = []
        for (u, wu), (v, wv) in (((x, a), (y, b)), ((x, a), (x, a)), ((y, b), (y, b))):
            Cuv = sqeuclidean(u, v)
            terms.append(entropic_value(pot_plan(wu, wv, Cuv, eps), Cuv, wu, wv, eps))
        ref = terms[0] - 0.5 * (terms[1] + terms[2])
        got = out["problems"][0]["sinkhorn_divergence"]
        self.assertAlmostEqual(got, ref, delta=1e-7 * abs(terms[0]))

    def test_unbalanced(self):
        rng = np.random.default_rng(9)
        n, m, d, eps, rho = 20, 24, 2, 0.25, 1.5
        x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.7
        a = rng.uniform(0.5, 1.5, n) / n
        b = rng.uniform(0.5, 1.5, m) / m * 1.3  # different masses: only unbalanced allows it
        out, f, g, _ = self.run_solver(["--x", self.save("x.npy", x), "--y",
                                        self.save("y.npy", y), "--a", self.save("a.npy", a),
                                        "--b", self.save("b.npy", b)], eps, "--rho-a", repr(rho),
                                       "--rho-b", repr(rho), points=False)
        C = sqeuclidean(x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            P_ref = ot.unbalanced.sinkhorn_unbalanced(
                a, b, C, eps, rho, method="sinkhorn_stabilized", reg_type="kl",
                numItermax=200000, stopThr=1e-15)
        # Both solve min <P,C> + eps KL(P|ab) + rho KL(P1|a) + rho KL(P^T1|b).
        P = plan_from_potentials(f[0], g[0], C, a, b, eps)
        np.testing.assert_allclose(P, P_ref, rtol=0, atol=1e-5 * P_ref.max(),
                                   err_msg="unbalanced plan vs POT")
        # Marginals are penalized, not matched: the test is not degenerate.
        self.assertGreater(np.abs(P.sum(1) - a).sum(), 1e-3)
        self.assertAlmostEqual(out["problems"][0]["transport_cost"], float(np.sum(P_ref * C)),
                               delta=1e-5 * float(np.sum(P_ref * C)))


if __name__ == "__main__":
    import unittest
    unittest.main()
