"""`mpirun -np R otgpu sinkhorn --distributed ...` against the single-process command:
the same report and outputs (f gathered, g, map, gradient, sampled partners) to fp64
round-off for an uneven row split, one problem or a batch [B, n, d], the Sinkhorn
divergence (self terms sharded), and one clear error (exit 1, no hang) when one
rank's rows hold a NaN.

Run: OTGPU_BIN=... MPIEXEC=... python3 -m unittest -v test_dist_cli   (skips: exit 77)
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit(77)

BIN = os.environ.get("OTGPU_BIN", "otgpu")
MPIEXEC = os.environ.get("MPIEXEC", "mpirun")


def run(args, ranks=None, timeout=60):
    cmd = [BIN] + [str(a) for a in args]
    if ranks is not None:
        cmd = [MPIEXEC, "--oversubscribe", "-np", str(ranks)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class DistributedCli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        rng = np.random.default_rng(7)
        self.n, self.m, self.d = 43, 31, 3  # 43 rows over 3 ranks: 15, 14, 14
        self.x = rng.normal(size=(self.n, self.d))
        a = rng.uniform(0.2, 1.0, self.n)
        self.paths = {"x": self.path("x.npy"), "y": self.path("y.npy"), "a": self.path("a.npy")}
        np.save(self.paths["x"], self.x)
        np.save(self.paths["y"], rng.normal(size=(self.m, self.d)) + 0.4)
        np.save(self.paths["a"], a / a.sum())

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def solve(self, tag, ranks, extra=(), tol="1e-10"):
        outs = {k: self.path(f"{k}_{tag}.npy") for k in ("f", "g", "map", "grad", "sample")}
        args = ["sinkhorn", "--x", self.paths["x"], "--y", self.paths["y"], "--a",
                self.paths["a"], "--eps", "0.05", "--eps-relative", "--tol", tol,
                "--backend", "cpu", "--json", "--seed", "5"] + list(extra)
        for k, p in outs.items():
            args += [f"--{k}-out", p]
        if ranks is not None:
            args.append("--distributed")
        proc = run(args, ranks, timeout=150)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return json.loads(proc.stdout), {k: np.load(p) for k, p in outs.items()}

    def test_three_ranks_equal_one_process(self):
        ref, ref_out = self.solve("one", None)
        got, got_out = self.solve("mpi", 3)
        self.assertEqual(got["distributed"], {"ranks": 3, "communicator": "mpi"})
        self.assertEqual(got["n"], self.n)
        p, q = got["problems"][0], ref["problems"][0]
        self.assertEqual(p["iterations"], q["iterations"])
        self.assertTrue(p["converged"])
        for k in ("ot_eps", "transport_cost", "eps"):
            self.assertAlmostEqual(p[k], q[k], delta=1e-10 * abs(q[k]))
        for k in ("f", "g", "map", "grad"):
            self.assertEqual(got_out[k].shape, ref_out[k].shape, k)
            scale = max(1.0, np.abs(ref_out[k]).max())
            self.assertLess(np.abs(got_out[k] - ref_out[k]).max(), 1e-10 * scale, k)
        np.testing.assert_array_equal(got_out["sample"], ref_out["sample"])

    def test_divergence_matches_one_process(self):
        # The self terms: sharded alternating solves under mpirun, the symmetric update in
        # one process; both to tol 1e-6 (a looser tol keeps the oversubscribed run short),
        # so the divergences agree to O(tol), far below its size.
        ref, _ = self.solve("one", None, ["--divergence"], tol="1e-6")
        got, _ = self.solve("mpi", 3, ["--divergence"], tol="1e-6")
        q, p = ref["problems"][0]["sinkhorn_divergence"], got["problems"][0]["sinkhorn_divergence"]
        self.assertGreater(q, 1e-3)
        self.assertAlmostEqual(p, q, delta=1e-6 * max(1.0, abs(q)))

    def test_a_batch_shards_every_problems_rows(self):
        # [B, n, d] float32 x with batched weights [B, n]: each rank reads its rows of
        # every problem (blocks at their offsets), the outputs come back [B, n, ...].
        rng = np.random.default_rng(11)
        B = 2
        xb = rng.normal(size=(B, self.n, self.d)).astype(np.float32)
        yb = rng.normal(size=(B, self.m, self.d)) + 0.3
        ab = rng.uniform(0.2, 1.0, (B, self.n))
        np.save(self.paths["x"], xb)
        np.save(self.paths["y"], yb)
        np.save(self.paths["a"], ab / ab.sum(axis=1, keepdims=True))
        ref, ref_out = self.solve("one", None, ["--divergence"], tol="1e-6")
        got, got_out = self.solve("mpi", 3, ["--divergence"], tol="1e-6")
        self.assertEqual(got["B"], B)
        self.assertEqual(len(got["problems"]), B)
        for p, q in zip(got["problems"], ref["problems"]):
            self.assertEqual(p["iterations"], q["iterations"])
            for k in ("ot_eps", "transport_cost", "eps"):
                self.assertAlmostEqual(p[k], q[k], delta=1e-10 * abs(q[k]))
            self.assertAlmostEqual(p["sinkhorn_divergence"], q["sinkhorn_divergence"],
                                   delta=1e-6 * max(1.0, abs(q["sinkhorn_divergence"])))
        for k in ("f", "g", "map", "grad"):
            self.assertEqual(got_out[k].shape, ref_out[k].shape, k)
            scale = max(1.0, np.abs(ref_out[k]).max())
            self.assertLess(np.abs(got_out[k] - ref_out[k]).max(), 1e-10 * scale, k)
        np.testing.assert_array_equal(got_out["sample"], ref_out["sample"])

    def test_a_bad_rank_stops_every_rank_with_one_error(self):
        bad = self.x.copy()
        bad[40, 2] = np.nan  # a row of the last rank
        np.save(self.paths["x"], bad)
        proc = run(["sinkhorn", "--distributed", "--x", self.paths["x"], "--y", self.paths["y"],
                    "--eps", "0.1"], ranks=3, timeout=60)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = [l for l in proc.stderr.splitlines() if l.startswith("otgpu: error:")]
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn("rank 2: --x:", lines[0])
        self.assertIn("(row 40, column 2) is nan", lines[0])


if __name__ == "__main__":
    unittest.main()
