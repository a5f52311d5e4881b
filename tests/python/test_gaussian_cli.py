"""End-to-end checks of `otgpu gaussian` against independent references: POT's
ot.gaussian.bures_wasserstein_distance / bures_wasserstein_mapping (skipped when
POT is not installed) and numpy formulas (eigh-based matrix square roots) for W2,
Bures and the entropic closed form; batching, broadcasting, float32 files, the map
file, the table output and the error messages.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_gaussian_cli   (from tests/python)
Set OTGPU_TEST_BACKEND=cpu|cuda|auto (default auto) to pick the backend under test.
"""

import os
import unittest

import numpy as np

from otgpu_testutil import CliTestCase

try:
    import ot.gaussian as pot_gaussian
    HAVE_POT = hasattr(pot_gaussian, "bures_wasserstein_distance")
except ImportError:
    pot_gaussian = None
    HAVE_POT = False

BACKEND = os.environ.get("OTGPU_TEST_BACKEND", "auto")


def psd_sqrt(s):
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def reference(m1, s1, m2, s2, eps):
    """(W2^2, Bures^2, OT_eps or None) with numpy only."""
    h = psd_sqrt(s1)
    mid = h @ s2 @ h
    mu = np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)
    bures = max(0.0, np.trace(s1) + np.trace(s2) - 2 * np.sqrt(mu).sum())
    w2 = float(np.sum((m1 - m2) ** 2) + bures)
    ent = None
    if eps > 0:
        # Janati et al. 2020, Thm. 1, with sigma^2 = eps / 2.
        sig2 = eps / 2
        dk = np.sqrt(4 * mu + sig2 ** 2)
        d = len(m1)
        ent = float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - dk.sum()
                    + d * sig2 * (1 - np.log(2 * sig2)) + sig2 * np.sum(np.log(dk + sig2)))
    return w2, bures, ent


def random_spd(rng, d, lo=0.2, hi=3.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.exp(rng.uniform(np.log(lo), np.log(hi), d))
    s = (q * lam) @ q.T
    return (s + s.T) / 2


class GaussianCli(CliTestCase):
    def write_inputs(self, m1, s1, m2, s2):
        return ["--m1", self.save("m1.npy", m1), "--s1", self.save("s1.npy", s1),
                "--m2", self.save("m2.npy", m2), "--s2", self.save("s2.npy", s2)]

    def solve(self, m1, s1, m2, s2, eps=0.0, map_out=False):
        args = ["gaussian", *self.write_inputs(m1, s1, m2, s2), "--backend", BACKEND]
        if eps > 0:
            args += ["--eps", repr(eps)]
        if map_out:
            args += ["--map-out", self.path("A.npy")]
        out = self.run_json(args)
        self.assertIn(out["backend"], ("cpu", "cuda"))
        self.assertGreaterEqual(out["time_ms"], 0)
        a = np.load(self.path("A.npy")) if map_out else None
        return out, a

    def test_single_pairs_match_numpy(self):
        rng = np.random.default_rng(1)
        for d in (1, 2, 5, 12, 40):
            m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
            s1, s2 = random_spd(rng, d), random_spd(rng, d)
            for eps in (0.0, 0.05, 2.0):
                out, _ = self.solve(m1, s1, m2, s2, eps)
                self.assertEqual(len(out["problems"]), 1)
                p = out["problems"][0]
                w2, bures, ent = reference(m1, s1, m2, s2, eps)
                scale = np.trace(s1) + np.trace(s2)
                self.assertAlmostEqual(p["w2_squared"], w2, delta=1e-10 * scale)
                self.assertAlmostEqual(p["bures_squared"], bures, delta=1e-10 * scale)
                if eps > 0:
                    self.assertAlmostEqual(p["entropic"], ent, delta=1e-10 * scale)
                else:
                    self.assertNotIn("entropic", p)

    def test_batched_broadcast_and_map(self):
        rng = np.random.default_rng(2)
        B, d = 6, 4
        m1 = rng.standard_normal(d)                      # shared source
        s1 = random_spd(rng, d)
        m2 = rng.standard_normal((B, d))
        s2 = np.stack([random_spd(rng, d) for _ in range(B)])
        out, a = self.solve(m1, s1, m2, s2, eps=0.3, map_out=True)
        self.assertEqual(len(out["problems"]), B)
        self.assertEqual(a.shape, (B, d, d))
        for k in range(B):
            w2, bures, ent = reference(m1, s1, m2[k], s2[k], 0.3)
            p = out["problems"][k]
            self.assertAlmostEqual(p["w2_squared"], w2, delta=1e-10 * (1 + w2))
            self.assertAlmostEqual(p["entropic"], ent, delta=1e-10 * (1 + abs(ent)))
            # The map pushes S1 to S2 and is symmetric positive definite.
            np.testing.assert_allclose(a[k] @ s1 @ a[k], s2[k], atol=1e-9 * np.abs(s2[k]).max())
            np.testing.assert_allclose(a[k], a[k].T, atol=1e-13 * np.abs(a[k]).max())
            self.assertGreater(np.linalg.eigvalsh(a[k]).min(), 0)

    def test_json_carries_sizes_and_options(self):
        rng = np.random.default_rng(6)
        B, d = 3, 4
        out, _ = self.solve(rng.standard_normal(d), random_spd(rng, d),
                            rng.standard_normal((B, d)),
                            np.stack([random_spd(rng, d) for _ in range(B)]), eps=0.25,
                            map_out=True)
        self.assertEqual(set(out), {"command", "backend", "time_ms", "B", "d", "options",
                                    "problems"})
        self.assertEqual((out["command"], out["B"], out["d"]), ("gaussian", B, d))
        self.assertEqual(out["options"], {"eps": 0.25, "map": True, "backend": BACKEND})

    def test_unbatched_map_is_two_dimensional_and_float32_inputs(self):
        rng = np.random.default_rng(3)
        d = 3
        m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d)
        f32 = [x.astype(np.float32) for x in (m1, s1, m2, s2)]
        out, a = self.solve(*f32, map_out=True)
        self.assertEqual(a.shape, (d, d))
        self.assertEqual(a.dtype, np.float64)
        # The float32 values, widened exactly, are the problem that was solved.
        w2, _, _ = reference(*[x.astype(np.float64) for x in f32], 0.0)
        self.assertAlmostEqual(out["problems"][0]["w2_squared"], w2, delta=1e-10 * (1 + w2))

    def test_table_output(self):
        rng = np.random.default_rng(4)
        d = 2
        args = ["gaussian", *self.write_inputs(rng.standard_normal(d), random_spd(rng, d),
                                               rng.standard_normal((3, d)),
                                               np.stack([random_spd(rng, d)] * 3)),
                "--eps", "0.1", "--backend", BACKEND]
        proc = self.run_ok(args)
        lines = proc.stdout.strip().splitlines()
        self.assertIn("3 pairs", lines[0])
        self.assertIn("OT_eps", lines[1])
        self.assertEqual(len(lines), 2 + 3)

    @unittest.skipUnless(HAVE_POT, "POT (ot.gaussian.bures_wasserstein_distance) not installed")
    def test_matches_pot(self):
        rng = np.random.default_rng(5)
        for d in (1, 3, 8, 33):
            m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
            s1, s2 = random_spd(rng, d, 0.05, 10.0), random_spd(rng, d, 0.05, 10.0)
            out, a = self.solve(m1, s1, m2, s2, map_out=True)
            w = float(np.asarray(pot_gaussian.bures_wasserstein_distance(m1, m2, s1, s2)))
            self.assertAlmostEqual(out["problems"][0]["w2_squared"], w * w,
                                   delta=1e-8 * (1 + w * w), msg=f"d = {d}")
            a_pot, b_pot = pot_gaussian.bures_wasserstein_mapping(m1, m2, s1, s2)
            np.testing.assert_allclose(a, a_pot, rtol=1e-6, atol=1e-8 * np.abs(a_pot).max(),
                                       err_msg=f"d = {d}")
            np.testing.assert_allclose(m2 - a @ m1, b_pot, rtol=1e-6, atol=1e-8,
                                       err_msg=f"d = {d}")

    def test_errors_name_the_flag_and_value(self):
        ok_m = np.zeros(2)
        ok_s = np.eye(2)
        bad_sym = np.array([[1.0, 0.2], [0.7, 1.0]])
        not_psd = np.array([[1.0, 2.0], [2.0, 1.0]])
        base = lambda m1, s1, m2, s2: ["gaussian", *self.write_inputs(m1, s1, m2, s2),  # noqa: E731
                                       "--backend", BACKEND]
        self.assert_clean_failure(base(ok_m, bad_sym, ok_m, ok_s), "--s1 (", "s1.npy",
                                  "not symmetric")
        self.assert_clean_failure(base(ok_m, ok_s, ok_m, not_psd), "--s2",
                                  "positive semi-definite", "smallest eigenvalue -1")
        self.assert_clean_failure(base(ok_m, ok_s, ok_m, np.stack([ok_s, not_psd])),
                                  "--s2", "of pair 1")
        nan_s = ok_s.copy()
        nan_s[0, 1] = np.nan
        self.assert_clean_failure(base(ok_m, nan_s, ok_m, ok_s), "--s1")
        self.assert_clean_failure(base(np.zeros(3), ok_s, ok_m, ok_s), "--s1", "d = 3")
        self.assert_clean_failure(base(ok_m, np.zeros((2, 3)), ok_m, ok_s), "--s1", "square")
        self.assert_clean_failure(base(np.zeros((3, 2)), ok_s, ok_m, np.stack([ok_s] * 2)),
                                  "batch size")
        # eps is checked by the library, named with the flag.
        line = self.assert_clean_failure([*base(ok_m, ok_s, ok_m, ok_s), "--eps", "-1"], "--eps",
                                         "-1")
        self.assertTrue(line.startswith("otgpu: error: --eps must be"), line)
        self.assertNotIn("gaussian_ot", line)
        self.assert_clean_failure([*base(ok_m, ok_s, ok_m, ok_s), "--device", "-1"], "--device")
        self.assert_clean_failure(["gaussian", "--m1", self.path("missing.npy"), "--s1",
                                   self.save("s.npy", ok_s), "--m2", self.save("m.npy", ok_m),
                                   "--s2", self.save("s2.npy", ok_s)], "--m1", "missing.npy")


if __name__ == "__main__":
    unittest.main()
