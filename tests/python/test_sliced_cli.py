"""End-to-end tests of `otgpu sliced`: values against a numpy implementation of the
same formula with the directions passed through --directions, 1-D values against
POT / SciPy, gradients, output formats and bad input.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_sliced_cli   (from tests/python)
"""

import unittest

import numpy as np

from otgpu_testutil import CliTestCase

try:
    import ot  # POT
except ImportError:  # pragma: no cover - optional oracle
    ot = None
try:
    import scipy.stats
except ImportError:  # pragma: no cover - optional oracle
    scipy = None


def w_pp_1d(u, v, a=None, b=None, p=2.0):
    """W_p^p between weighted 1-D samples: the integral over t of
    |F^-1(t) - G^-1(t)|^p, evaluated exactly on the union of the breakpoints."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    a = np.ones(len(u)) if a is None else np.asarray(a, dtype=np.float64)
    b = np.ones(len(v)) if b is None else np.asarray(b, dtype=np.float64)
    iu, iv = np.argsort(u, kind="stable"), np.argsort(v, kind="stable")
    us, vs = u[iu], v[iv]
    ca, cb = np.cumsum(a[iu]), np.cumsum(b[iv])
    ca, cb = ca / ca[-1], cb / cb[-1]  # both end at exactly 1
    t = np.unique(np.concatenate([[0.0], ca, cb]))
    mid = 0.5 * (t[:-1] + t[1:])
    qa = us[np.minimum(np.searchsorted(ca, mid), len(us) - 1)]
    qb = vs[np.minimum(np.searchsorted(cb, mid), len(vs) - 1)]
    return float(np.sum(np.diff(t) * np.abs(qa - qb) ** p))


def sliced_pp(x, y, theta, a=None, b=None, p=2.0, max_sliced=False):
    """Mean (or max) over the columns of theta (normalized) of W_p^p of the projections."""
    theta = theta / np.linalg.norm(theta, axis=0, keepdims=True)
    terms = [w_pp_1d(x @ theta[:, l], y @ theta[:, l], a, b, p) for l in range(theta.shape[1])]
    return max(terms) if max_sliced else float(np.mean(terms))


class SlicedCliTest(CliTestCase):

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(1234)

    def test_value_matches_numpy_with_given_directions(self):
        x = self.rng.random((60, 4))
        y = self.rng.random((45, 4)) + 0.1
        a = self.rng.random(60) + 0.05
        b = self.rng.random(45) * 3 + 0.05
        b *= a.sum() / b.sum()  # equal masses (the sinkhorn rule); then both normalized
        theta = self.rng.normal(size=(4, 20)) * 3.0  # not unit: the command normalizes
        args = ["sliced", "--x", self.save("x.npy", x), "--y", self.save("y.npy", y),
                "--a", self.save("a.npy", a), "--b", self.save("b.npy", b),
                "--directions", self.save("d.npy", theta), "--backend", "cpu"]
        for p in (1.0, 1.5, 2.0, 3.0):
            for max_sliced in (False, True):
                extra = ["--max-sliced"] if max_sliced else []
                out = self.run_json([*args, "--p", p, *extra])
                self.assertEqual(set(out), {"command", "backend", "time_ms", "B", "n", "m", "d",
                                            "options", "problems"})
                self.assertEqual(out["command"], "sliced")
                self.assertEqual(out["backend"], "cpu")
                self.assertGreaterEqual(out["time_ms"], 0)
                self.assertEqual((out["B"], out["n"], out["m"], out["d"]), (1, 60, 45, 4))
                # Explicit directions: L is their count and the seed shaped nothing.
                self.assertEqual(out["options"], {"p": p, "L": 20, "max_sliced": max_sliced,
                                                  "backend": "cpu", "seed": None,
                                                  "directions": args[10]})
                self.assertEqual(len(out["problems"]), 1)
                got = out["problems"][0]
                self.assertEqual(set(got), {"sliced_wasserstein", "sliced_wasserstein_pp"})
                want_pp = sliced_pp(x, y, theta, a, b, p, max_sliced)
                want = want_pp ** (1 / p)
                self.assertAlmostEqual(got["sliced_wasserstein"], want,
                                       delta=1e-10 * (1 + want), msg=f"p={p} max={max_sliced}")
                self.assertAlmostEqual(got["sliced_wasserstein_pp"], want_pp,
                                       delta=1e-10 * (1 + want_pp), msg=f"p={p} max={max_sliced}")

    def test_batched_problems(self):
        B, n, m, d = 3, 30, 21, 5
        x = self.rng.normal(size=(B, n, d))
        y = self.rng.normal(size=(B, m, d)) * 1.5
        a = self.rng.random((B, n))
        a /= a.sum(1, keepdims=True)  # mass 1, that of the uniform y
        theta = self.rng.normal(size=(d, 7))
        out = self.run_json(["sliced", "--x", self.save("x.npy", x), "--y", self.save("y.npy", y),
                             "--a", self.save("a.npy", a), "--directions",
                             self.save("d.npy", theta), "--backend", "cpu"])
        self.assertEqual(len(out["problems"]), B)
        for k in range(B):
            want = np.sqrt(sliced_pp(x[k], y[k], theta, a[k], None, 2.0))
            self.assertAlmostEqual(out["problems"][k]["sliced_wasserstein"], want, delta=1e-10)

    def test_one_dimension_matches_pot_and_scipy(self):
        u = self.rng.normal(size=50)
        v = self.rng.random(33) * 2
        a = self.rng.random(50)
        b = self.rng.random(33)
        b *= a.sum() / b.sum()  # equal masses (the sinkhorn rule)
        files = ["--x", self.save("x.npy", u[:, None]), "--y", self.save("y.npy", v[:, None]),
                 "--a", self.save("a.npy", a), "--b", self.save("b.npy", b), "--backend", "cpu",
                 "-L", 5]
        # d = 1: every direction is +1 or -1, so SW_p is the exact W_p.
        w1 = self.run_json(["sliced", *files, "--p", 1])["problems"][0]["sliced_wasserstein"]
        w2 = self.run_json(["sliced", *files, "--p", 2])["problems"][0]["sliced_wasserstein"]
        self.assertAlmostEqual(w1, w_pp_1d(u, v, a, b, 1.0), delta=1e-12)
        self.assertAlmostEqual(w2, np.sqrt(w_pp_1d(u, v, a, b, 2.0)), delta=1e-12)
        if scipy is not None:
            self.assertAlmostEqual(w1, scipy.stats.wasserstein_distance(u, v, a, b), delta=1e-10)
        if ot is not None:
            pot2 = ot.wasserstein_1d(u, v, a / a.sum(), b / b.sum(), p=2)  # W_2^2
            self.assertAlmostEqual(w2, float(np.sqrt(pot2)), delta=1e-10)
            pot1 = ot.wasserstein_1d(u, v, a / a.sum(), b / b.sum(), p=1)
            self.assertAlmostEqual(w1, float(pot1), delta=1e-10)

    def test_gradient_file_matches_closed_form(self):
        # Uniform n = m, p = 2: d SW_2^2 / d x_i = (2 / (n L)) sum_l theta_l (u_il - v_il*)
        # where v_il* is the partner of rank(u_il) among the sorted projections of y.
        n, d, L = 40, 3, 6
        x = self.rng.normal(size=(n, d))
        y = self.rng.normal(size=(n, d)) + 0.5
        theta = self.rng.normal(size=(d, L))
        theta /= np.linalg.norm(theta, axis=0, keepdims=True)
        gx, gy = self.path("gx.npy"), self.path("gy.npy")
        self.run_ok(["sliced", "--x", self.save("x.npy", x), "--y", self.save("y.npy", y),
                     "--directions", self.save("d.npy", theta), "--backend", "cpu",
                     "--grad-out", gx, "--grad-y-out", gy])
        want_x, want_y = np.zeros((n, d)), np.zeros((n, d))
        for l in range(L):
            u, v = x @ theta[:, l], y @ theta[:, l]
            iu, iv = np.argsort(u), np.argsort(v)
            diff = np.empty(n)
            diff[iu] = u[iu] - v[iv]
            dv = np.empty(n)
            dv[iv] = v[iv] - u[iu]
            want_x += 2 * np.outer(diff, theta[:, l]) / (n * L)
            want_y += 2 * np.outer(dv, theta[:, l]) / (n * L)
        got_x, got_y = np.load(gx), np.load(gy)
        self.assertEqual(got_x.shape, (n, d))
        np.testing.assert_allclose(got_x, want_x, atol=1e-12)
        np.testing.assert_allclose(got_y, want_y, atol=1e-12)

    def test_seeded_directions_and_table_output(self):
        x = self.save("x.npy", self.rng.random((25, 6)).astype(np.float32))
        y = self.save("y.npy", self.rng.random((30, 6)))
        base = ["sliced", "--x", x, "--y", y, "--backend", "cpu", "-L", 16]
        seeded = self.run_json([*base, "--seed", 7])
        self.assertEqual(seeded["options"]["seed"], 7)
        self.assertEqual(seeded["options"]["L"], 16)
        self.assertIsNone(seeded["options"]["directions"])
        s1 = seeded["problems"][0]["sliced_wasserstein"]
        s2 = self.run_json([*base, "--seed", 7])["problems"][0]["sliced_wasserstein"]
        s3 = self.run_json([*base, "--seed", 8])["problems"][0]["sliced_wasserstein"]
        self.assertEqual(s1, s2)
        self.assertNotEqual(s1, s3)
        table = self.run_ok([*base, "--seed", 7]).stdout
        self.assertIn("sliced Wasserstein", table)
        self.assertIn("SW_p", table)
        self.assertIn(f"{s1:.6f}"[:7], table)

    def test_bad_input_is_one_clear_error(self):
        x = self.save("x.npy", self.rng.random((10, 3)))
        y = self.save("y.npy", self.rng.random((12, 3)))
        y4 = self.save("y4.npy", self.rng.random((12, 4)))
        base = ["sliced", "--x", x, "--y", y, "--backend", "cpu"]
        # The library checks the options; the message names the flag typed.
        line = self.assert_clean_failure([*base, "--p", 0.5], "--p", "0.5")
        self.assertTrue(line.startswith("otgpu: error: --p must be"), line)
        self.assertNotIn("sliced_wasserstein", line)
        line = self.assert_clean_failure([*base, "-L", 0], "--projections", "0")
        self.assertTrue(line.startswith("otgpu: error: --projections must be"), line)
        self.assert_clean_failure([*base, "--threads", -1], "--threads")
        self.assert_clean_failure([*base, "--device", -1], "--device")
        # Shapes and values are the library's to check; the file is named with the flag.
        self.assert_clean_failure(["sliced", "--x", x, "--y", self.save("v.npy", np.ones(12)),
                                   "--backend", "cpu"], "--y (", "v.npy")
        self.assert_clean_failure(["sliced", "--x", x, "--y", y4, "--backend", "cpu"], "y")
        self.assert_clean_failure(
            [*base, "--directions", self.save("bad_d.npy", self.rng.random((4, 5)))],
            "directions", "[4, 5]")
        zero_col = np.ones((3, 2))
        zero_col[:, 1] = 0
        self.assert_clean_failure([*base, "--directions", self.save("z.npy", zero_col)],
                                  "directions", "zero norm")
        neg = np.ones(10)
        neg[3] = -1
        self.assert_clean_failure([*base, "--a", self.save("neg.npy", neg)], "--a (", "neg.npy",
                                  "negative")
        # Unequal masses are rejected as sinkhorn rejects them (issue 13), naming both.
        self.assert_clean_failure([*base, "--a", self.save("a2.npy", np.full(10, 0.2))],
                                  "--a (", "a2.npy", "mass(a) = 2", "mass(b) = 1")
        # |u - v|^p out of the fp64 range is rejected with the range, not printed as 0.
        self.assert_clean_failure([*base, "--p", "1e6"], "--p", "fp64 range")
        # ... while equal measures are exactly 0 at any p (zero-mass pieces add nothing).
        same = self.run_json(["sliced", "--x", x, "--y", x, "--backend", "cpu", "--p", "1e6"])
        self.assertEqual(same["problems"][0]["sliced_wasserstein"], 0.0)
        nan = self.rng.random((10, 3))
        nan[2, 1] = np.nan
        self.assert_clean_failure(["sliced", "--x", self.save("nan.npy", nan), "--y", y],
                                  "--x (", "nan.npy", "[2, 1]")
        self.assert_clean_failure([*base[:-2], "--backend", "gpu"], "--backend", "gpu")
        self.assert_clean_failure(["sliced", "--x", self.path("missing.npy"), "--y", y],
                                  "missing.npy")


if __name__ == "__main__":
    unittest.main()
