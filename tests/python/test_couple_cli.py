"""End-to-end tests of `otgpu couple`: pairs are valid indices, exact pairs equal
scipy's linear_sum_assignment on the same cost (built here with numpy), entropic pairs
are distinct without replacement and follow the plan's heavy entries, the JSON report,
and bad input as one clean error line.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_couple_cli   (from tests/python)
"""

import json
import unittest

import numpy as np

from otgpu_testutil import CliTestCase, sqeuclidean

try:
    from scipy.optimize import linear_sum_assignment
except ImportError:  # pragma: no cover - optional oracle
    linear_sum_assignment = None


class CoupleCliTest(CliTestCase):

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(99)

    @unittest.skipIf(linear_sum_assignment is None, "scipy not installed")
    def test_exact_pairs_equal_scipy_assignment(self):
        x0 = self.rng.normal(size=(4, 30, 3))
        x1 = self.rng.normal(size=(4, 30, 3)) + 1.0
        out = self.path("P.npy")
        j = self.run_json(["couple", "--x0", self.save("x0.npy", x0), "--x1",
                           self.save("x1.npy", x1), "--method", "exact", "--pairs-out", out,
                           "--backend", "cpu"])
        P = np.load(out)
        self.assertEqual(P.dtype, np.int64)
        self.assertEqual(P.shape, (4, 30, 2))
        for k in range(4):
            C = sqeuclidean(x0[k], x1[k])
            rows, cols = linear_sum_assignment(C)
            np.testing.assert_array_equal(P[k, :, 0], rows)
            np.testing.assert_array_equal(P[k, :, 1], cols)
            self.assertAlmostEqual(j["problems"][k]["pair_cost"], C[rows, cols].mean(), places=9)
            self.assertTrue(j["problems"][k]["converged"])

    def test_entropic_pairs_are_valid_and_distinct(self):
        x0 = self.rng.normal(size=(20, 2)).astype(np.float32)
        x1 = self.rng.normal(size=(15, 2)).astype(np.float32) + 3.0
        out = self.path("P.npy")
        j = self.run_json(["couple", "--x0", self.save("x0.npy", x0), "--x1",
                           self.save("x1.npy", x1), "--pairs", "40", "--seed", "5",
                           "--pairs-out", out, "--backend", "cpu"])
        P = np.load(out)
        self.assertEqual(P.shape, (1, 40, 2))
        self.assertTrue(((P[0, :, 0] >= 0) & (P[0, :, 0] < 20)).all())
        self.assertTrue(((P[0, :, 1] >= 0) & (P[0, :, 1] < 15)).all())
        flat = P[0, :, 0] * 15 + P[0, :, 1]
        self.assertEqual(len(set(flat.tolist())), 40, "without replacement: distinct pairs")
        self.assertEqual(j["pairs"], 40)
        self.assertEqual(j["options"]["replacement"], False)
        C = sqeuclidean(x0, x1)
        self.assertAlmostEqual(j["problems"][0]["pair_cost"], C[P[0, :, 0], P[0, :, 1]].mean(),
                               places=4)
        # Same seed, same pairs; the sampled pairs are cheaper than independent pairs.
        out2 = self.path("P2.npy")
        self.run_ok(["couple", "--x0", self.path("x0.npy"), "--x1", self.path("x1.npy"),
                     "--pairs", "40", "--seed", "5", "--pairs-out", out2, "--backend", "cpu"])
        np.testing.assert_array_equal(np.load(out2), P)
        self.assertLess(j["problems"][0]["pair_cost"], C.mean())

    def test_small_eps_pairs_are_the_assignment(self):
        if linear_sum_assignment is None:
            self.skipTest("scipy not installed")
        x0 = self.rng.normal(size=(12, 2))
        x1 = self.rng.normal(size=(12, 2))
        out = self.path("P.npy")
        self.run_ok(["couple", "--x0", self.save("x0.npy", x0), "--x1", self.save("x1.npy", x1),
                     "--eps", "1e-4", "--per-row", "--pairs-out", out, "--backend", "cpu"])
        P = np.load(out)
        rows, cols = linear_sum_assignment(sqeuclidean(x0, x1))
        np.testing.assert_array_equal(P[0, :, 1], cols)

    def test_replacement_and_unbalanced(self):
        x0 = self.rng.normal(size=(6, 2))
        x1 = self.rng.normal(size=(5, 2))
        out = self.path("P.npy")
        j = self.run_json(["couple", "--x0", self.save("x0.npy", x0), "--x1",
                           self.save("x1.npy", x1), "--method", "unbalanced", "--rho", "2",
                           "--pairs", "200", "--replacement", "--pairs-out", out,
                           "--backend", "cpu"])
        P = np.load(out)
        self.assertEqual(P.shape, (1, 200, 2))
        self.assertEqual(j["options"]["rho"], 2)
        self.assertLess(len(set((P[0, :, 0] * 5 + P[0, :, 1]).tolist())), 200)

    def test_bad_input(self):
        x0 = self.save("x0.npy", self.rng.normal(size=(6, 2)))
        x1 = self.save("x1.npy", self.rng.normal(size=(5, 2)))
        x3 = self.save("x3.npy", self.rng.normal(size=(6, 3)))
        bad = self.rng.normal(size=(6, 2))
        bad[2, 1] = np.nan
        xn = self.save("xn.npy", bad)
        self.assert_clean_failure(["couple", "--x0", x0, "--x1", x3], "d = 2", "d = 3")
        self.assert_clean_failure(["couple", "--x0", xn, "--x1", x1], "--x0", "[2, 1]", "nan")
        self.assert_clean_failure(["couple", "--x0", x0, "--x1", x1, "--method", "exact"],
                                  "bs1 = 5")
        self.assert_clean_failure(["couple", "--x0", x0, "--x1", x1, "--method", "emd"],
                                  "--method", "emd")
        self.assert_clean_failure(["couple", "--x0", x0, "--x1", x1, "--pairs", "31"],
                                  "--pairs", "31")
        self.assert_clean_failure(["couple", "--x0", x0, "--x1", x1, "--method", "unbalanced",
                                   "--rho", "0"], "--rho")
        self.assert_clean_failure(["couple", "--x0", x0, "--x1", x1, "--pairs-out", x1],
                                  "--pairs-out", "input")
        self.assert_clean_failure(["couple", "--x0", x0, "--x1", x1, "--eps", "-1"], "--eps")


if __name__ == "__main__":
    unittest.main()
