"""End-to-end tests of `otgpu sinkhorn`: output formats and files, and that every
kind of bad input ends in one clear error line and a non-zero exit.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_cli   (from tests/python)
"""

import json
import os
import unittest

import numpy as np

from otgpu_testutil import (CliTestCase, entropic_value, euclidean, npy_header, npy_image,
                            plan_from_potentials, run_otgpu, sqeuclidean)

REQUIRED_PROBLEM_KEYS = {"ot_eps", "transport_cost", "marginal_error", "iterations",
                         "converged", "eps"}


def cpu_only():
    """True when `--backend auto` runs on the CPU here (no usable GPU)."""
    return _AUTO_BACKEND[0] == "cpu"


_AUTO_BACKEND = [None]


def setUpModule():
    # One tiny run tells which backend `auto` picks on this machine.
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        x = os.path.join(d, "x.npy")
        np.save(x, np.zeros((2, 1)))
        proc = run_otgpu(["sinkhorn", "--x", x, "--y", x, "--eps", "1", "--json"])
        if proc.returncode != 0:
            raise RuntimeError(f"otgpu does not run: {proc.stderr}")
        _AUTO_BACKEND[0] = json.loads(proc.stdout)["backend"]


class SinkhornOutputs(CliTestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(1234)
        self.n, self.m, self.d = 23, 17, 3
        self.x = rng.normal(size=(self.n, self.d))
        self.y = rng.normal(size=(self.m, self.d)) + 0.5
        self.xp = self.save("x.npy", self.x)
        self.yp = self.save("y.npy", self.y)
        self.eps = 0.5
        self.base = ["sinkhorn", "--x", self.xp, "--y", self.yp, "--eps", self.eps,
                     "--tol", "1e-11", "--max-iter", "20000"]

    def check_problem_schema(self, p):
        self.assertTrue(REQUIRED_PROBLEM_KEYS <= set(p), p)
        for k in ("ot_eps", "transport_cost", "marginal_error", "eps"):
            self.assertIsInstance(p[k], float, k)
            self.assertTrue(np.isfinite(p[k]), k)
        self.assertIsInstance(p["iterations"], int)
        self.assertIsInstance(p["converged"], bool)

    def test_json_schema(self):
        out = self.run_json(self.base)
        self.assertEqual(set(out), {"command", "backend", "time_ms", "B", "n", "m", "d",
                                    "options", "problems", "precision", "tensor_cores"})
        # What computed the costs: fp64 on the CPU reference; tensor cores only on a GPU.
        if out["backend"] == "cpu":
            self.assertEqual((out["precision"], out["tensor_cores"]), ("fp64", False))
        self.assertEqual((out["B"], out["n"], out["m"], out["d"]), (1, self.n, self.m, self.d))
        self.assertEqual((out["options"]["eps"], out["options"]["tol"],
                          out["options"]["max_iter"]), (self.eps, 1e-11, 20000))
        self.assertIn(out["backend"], ("cpu", "cuda"))
        self.assertGreaterEqual(out["time_ms"], 0.0)
        self.assertEqual(len(out["problems"]), 1)
        p = out["problems"][0]
        self.check_problem_schema(p)
        self.assertTrue(p["converged"])
        self.assertGreater(p["iterations"], 0)
        self.assertLessEqual(p["marginal_error"], 1e-11)
        self.assertEqual(p["eps"], self.eps)
        # Squared-Euclidean OT between these clouds is strictly positive and the
        # entropic value is the transport cost plus a non-negative KL term.
        self.assertGreater(p["transport_cost"], 0.0)
        self.assertGreater(p["ot_eps"], p["transport_cost"])

    def test_potentials_define_the_plan(self):
        f_out, g_out = self.path("f.npy"), self.path("g.npy")
        out = self.run_json([*self.base, "--f-out", f_out, "--g-out", g_out])
        f, g = np.load(f_out), np.load(g_out)
        self.assertEqual((f.shape, f.dtype), ((self.n,), np.float64))
        self.assertEqual((g.shape, g.dtype), ((self.m,), np.float64))
        a, b = np.full(self.n, 1 / self.n), np.full(self.m, 1 / self.m)
        C = sqeuclidean(self.x, self.y)
        P = plan_from_potentials(f, g, C, a, b, self.eps)
        np.testing.assert_allclose(P.sum(1), a, rtol=0, atol=1e-11)
        np.testing.assert_allclose(P.sum(0), b, rtol=0, atol=1e-11)
        p = out["problems"][0]
        self.assertAlmostEqual(p["transport_cost"], float(np.sum(P * C)), delta=1e-9)
        self.assertAlmostEqual(p["ot_eps"], entropic_value(P, C, a, b, self.eps), delta=1e-9)
        # The dual value at the returned potentials.
        self.assertAlmostEqual(p["ot_eps"], float(a @ f + b @ g), delta=1e-9)

    def test_map_gradient_and_samples(self):
        f_out, g_out = self.path("f.npy"), self.path("g.npy")
        map_out, grad_out, s_out = self.path("T.npy"), self.path("G.npy"), self.path("S.npy")
        self.run_json([*self.base, "--f-out", f_out, "--g-out", g_out, "--map-out", map_out,
                       "--grad-out", grad_out, "--sample-out", s_out, "--seed", "7"])
        T, G, S = np.load(map_out), np.load(grad_out), np.load(s_out)
        self.assertEqual((T.shape, T.dtype), ((self.n, self.d), np.float64))
        self.assertEqual((G.shape, G.dtype), ((self.n, self.d), np.float64))
        self.assertEqual((S.shape, S.dtype), ((self.n,), np.int64))
        a, b = np.full(self.n, 1 / self.n), np.full(self.m, 1 / self.m)
        P = plan_from_potentials(np.load(f_out), np.load(g_out), sqeuclidean(self.x, self.y),
                                 a, b, self.eps)
        r = P.sum(1)
        np.testing.assert_allclose(T, (P @ self.y) / r[:, None], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(G, 2 * (r[:, None] * self.x - P @ self.y), rtol=1e-9,
                                   atol=1e-12)
        self.assertTrue(np.all((S >= 0) & (S < self.m)), S)
        # Same seed, same partners; another seed, other partners (P is far from a
        # permutation at this eps, so 23 identical draws would be a broken RNG).
        s2, s3 = self.path("S2.npy"), self.path("S3.npy")
        self.run_ok([*self.base, "--sample-out", s2, "--seed", "7"])
        self.run_ok([*self.base, "--sample-out", s3, "--seed", "8"])
        np.testing.assert_array_equal(np.load(s2), S)
        self.assertFalse(np.array_equal(np.load(s3), S))

    def test_table_output(self):
        proc = self.run_ok(self.base)
        lines = proc.stdout.rstrip("\n").split("\n")
        self.assertEqual(len(lines), 3, proc.stdout)
        header = lines[0].split()
        for col in ("problem", "ot_eps", "transport_cost", "marginal_error", "iterations",
                    "converged", "eps"):
            self.assertIn(col, header)
        row = dict(zip(header, lines[1].split()))
        self.assertEqual(row["problem"], "0")
        self.assertEqual(row["converged"], "yes")
        ref = self.run_json(self.base)["problems"][0]
        self.assertAlmostEqual(float(row["ot_eps"]), ref["ot_eps"],
                               delta=1e-8 * abs(ref["ot_eps"]))
        self.assertTrue(lines[2].startswith("backend: "), lines[2])
        self.assertIn(" ms", lines[2])
        self.assertEqual(proc.stderr, "")

    def test_float32_files(self):
        x32, y32 = self.x.astype(np.float32), self.y.astype(np.float32)
        ref = self.run_json(["sinkhorn", "--x", self.save("x64.npy", x32.astype(np.float64)),
                             "--y", self.save("y64.npy", y32.astype(np.float64)),
                             *self.base[5:], "--backend", "cpu"])["problems"][0]
        f_out = self.path("f.npy")
        got = self.run_json(["sinkhorn", "--x", self.save("x32.npy", x32),
                             "--y", self.save("y32.npy", y32), *self.base[5:],
                             "--backend", "cpu", "--f-out", f_out])["problems"][0]
        self.assertEqual(np.load(f_out).dtype, np.float64)
        # Same values (exactly representable); only the arithmetic path may differ.
        for k in ("ot_eps", "transport_cost"):
            self.assertAlmostEqual(got[k], ref[k], delta=1e-5 * abs(ref[k]), msg=k)

    def test_big_endian_file(self):
        ref = self.run_json(self.base)["problems"][0]
        got = self.run_json(["sinkhorn", "--x", self.save("xbe.npy", self.x.astype(">f8")),
                             *self.base[3:]])["problems"][0]
        self.assertEqual(got["ot_eps"], ref["ot_eps"])

    def test_cost_matrix_matches_points(self):
        pts = self.run_json(self.base)["problems"][0]
        C = self.save("C.npy", sqeuclidean(self.x, self.y))
        f_out = self.path("f.npy")
        mat = self.run_json(["sinkhorn", "--cost-matrix", C, *self.base[5:],
                             "--f-out", f_out])["problems"][0]
        self.assertEqual(np.load(f_out).shape, (self.n,))
        for k in ("ot_eps", "transport_cost"):
            self.assertAlmostEqual(mat[k], pts[k], delta=1e-9 * abs(pts[k]), msg=k)

    def test_euclidean_cost(self):
        pts = self.run_json([*self.base, "--cost", "euclidean"])["problems"][0]
        C = self.save("C.npy", euclidean(self.x, self.y))
        mat = self.run_json(["sinkhorn", "--cost-matrix", C, *self.base[5:]])["problems"][0]
        self.assertAlmostEqual(mat["ot_eps"], pts["ot_eps"], delta=1e-9 * abs(pts["ot_eps"]))
        sq = self.run_json(self.base)["problems"][0]
        self.assertNotAlmostEqual(sq["ot_eps"], pts["ot_eps"], places=3)

    def test_eps_relative_reports_absolute_eps(self):
        out = self.run_json([*self.base[:6], "0.05", "--eps-relative", *self.base[7:]])
        mean_c = sqeuclidean(self.x, self.y).mean()
        self.assertAlmostEqual(out["problems"][0]["eps"], 0.05 * mean_c, delta=1e-12 * mean_c)

    def test_weights(self):
        rng = np.random.default_rng(5)
        a = rng.uniform(0.1, 1.0, self.n)
        a /= a.sum()
        b = rng.uniform(0.1, 1.0, self.m)
        b /= b.sum()
        f_out, g_out = self.path("f.npy"), self.path("g.npy")
        self.run_json([*self.base, "--a", self.save("a.npy", a), "--b", self.save("b.npy", b),
                       "--f-out", f_out, "--g-out", g_out])
        P = plan_from_potentials(np.load(f_out), np.load(g_out), sqeuclidean(self.x, self.y),
                                 a, b, self.eps)
        np.testing.assert_allclose(P.sum(1), a, rtol=0, atol=1e-11)
        np.testing.assert_allclose(P.sum(0), b, rtol=0, atol=1e-11)

    def test_batched(self):
        rng = np.random.default_rng(9)
        B = 3
        xb = rng.normal(size=(B, self.n, self.d))
        yb = rng.normal(size=(B, self.m, self.d))
        ab = rng.uniform(0.5, 1.0, (B, self.n))
        ab /= ab.sum(1, keepdims=True)
        outs = {k: self.path(f"{k}.npy") for k in ("f", "g", "map", "grad", "sample")}
        out = self.run_json(["sinkhorn", "--x", self.save("xb.npy", xb), "--y",
                             self.save("yb.npy", yb), "--a", self.save("ab.npy", ab),
                             *self.base[5:], *sum(([f"--{k}-out", p] for k, p in outs.items()),
                                                  [])])
        self.assertEqual(len(out["problems"]), B)
        shapes = {"f": (B, self.n), "g": (B, self.m), "map": (B, self.n, self.d),
                  "grad": (B, self.n, self.d), "sample": (B, self.n)}
        for k, p in outs.items():
            arr = np.load(p)
            self.assertEqual(arr.shape, shapes[k], k)
            self.assertEqual(arr.dtype, np.int64 if k == "sample" else np.float64, k)
        f, g = np.load(outs["f"]), np.load(outs["g"])
        for i in range(B):
            b = np.full(self.m, 1 / self.m)
            # Each problem on its own must give the same numbers as inside the batch.
            single = self.run_json(["sinkhorn", "--x", self.save("x1.npy", xb[i]), "--y",
                                    self.save("y1.npy", yb[i]), "--a",
                                    self.save("a1.npy", ab[i]), *self.base[5:]])["problems"][0]
            self.assertAlmostEqual(out["problems"][i]["ot_eps"], single["ot_eps"],
                                   delta=1e-9 * abs(single["ot_eps"]))
            P = plan_from_potentials(f[i], g[i], sqeuclidean(xb[i], yb[i]), ab[i], b, self.eps)
            np.testing.assert_allclose(P.sum(1), ab[i], rtol=0, atol=1e-11)

    def test_batched_cost_matrix(self):
        rng = np.random.default_rng(10)
        C = rng.uniform(0, 2, (2, 6, 9))
        g_out = self.path("g.npy")
        out = self.run_json(["sinkhorn", "--cost-matrix", self.save("C.npy", C),
                             *self.base[5:], "--g-out", g_out])
        self.assertEqual(len(out["problems"]), 2)
        self.assertEqual(np.load(g_out).shape, (2, 9))

    def test_divergence(self):
        out = self.run_json([*self.base, "--divergence"])
        div = out["problems"][0]["sinkhorn_divergence"]
        self.assertGreater(div, 0.0)
        self.assertLess(div, out["problems"][0]["ot_eps"])
        same = self.run_json(["sinkhorn", "--x", self.xp, "--y", self.xp, *self.base[5:],
                              "--divergence"])
        self.assertAlmostEqual(same["problems"][0]["sinkhorn_divergence"], 0.0, delta=1e-9)

    def test_epsilon_scaling_and_check_every(self):
        ref = self.run_json(self.base)["problems"][0]
        scaled = self.run_json([*self.base, "--eps-init", "20", "--eps-decay", "0.7",
                                "--check-every", "3", "--threads", "2"])["problems"][0]
        self.assertTrue(scaled["converged"])
        self.assertAlmostEqual(scaled["ot_eps"], ref["ot_eps"], delta=1e-9 * abs(ref["ot_eps"]))

    def test_iteration_cap_is_reported_not_an_error(self):
        out = self.run_json([*self.base[:7], "--tol", "0", "--max-iter", "3"])
        p = out["problems"][0]
        self.assertFalse(p["converged"])
        self.assertEqual(p["iterations"], 3)

    def test_unbalanced_runs_and_converges(self):
        out = self.run_json([*self.base, "--rho-a", "1.0", "--rho-b", "2.0"])
        p = out["problems"][0]
        self.assertTrue(p["converged"])
        self.assertGreater(p["marginal_error"], 1e-6)  # marginals are only penalized

    def test_backend_cpu_and_cuda_flags(self):
        out = self.run_json([*self.base, "--backend", "cpu"])
        self.assertEqual(out["backend"], "cpu")
        if cpu_only():
            self.assert_clean_failure([*self.base, "--backend", "cuda"], "cuda")
        else:
            self.assertEqual(self.run_json([*self.base, "--backend", "cuda"])["backend"], "cuda")


class BadInput(CliTestCase):
    """Each bad input: exit code > 0, one stderr line naming the culprit, no stdout."""

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(4)
        self.xp = self.save("x.npy", rng.normal(size=(6, 2)))
        self.yp = self.save("y.npy", rng.normal(size=(5, 2)))

    def sinkhorn_with_x(self, xpath, *extra):
        return ["sinkhorn", "--x", xpath, "--y", self.yp, "--eps", "0.1", *extra]

    def check_bad_x(self, name, data, *mentions):
        p = self.write_bytes(name, data)
        return self.assert_clean_failure(self.sinkhorn_with_x(p), name, *mentions)

    # -- files ---------------------------------------------------------------------
    def test_missing_file(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.path("nope.npy")), "nope.npy",
                                  "--x", "No such file")

    def test_control_characters_in_file_name(self):
        # A hostile name must not break the one-line error contract.
        self.assert_clean_failure(self.sinkhorn_with_x(self.path("a\nb.npy")), "a\\x0ab.npy")
        p = self.write_bytes("c\rd.npy", b"\x93NUMPY")
        self.assert_clean_failure(self.sinkhorn_with_x(p), "c\\x0dd.npy")

    def test_directory_as_file(self):
        os.mkdir(self.path("dir.npy"))
        self.assert_clean_failure(self.sinkhorn_with_x(self.path("dir.npy")), "dir.npy",
                                  "directory")

    def test_empty_file(self):
        self.check_bad_x("empty.npy", b"", "empty")

    def test_not_npy(self):
        self.check_bad_x("text.npy", b"hello, world\n" * 10, "not a .npy file")

    def test_truncated_data(self):
        full = npy_image(npy_header(shape=(100, 3)), b"\0" * 2400)
        self.check_bad_x("trunc.npy", full[:-1200],
                         "truncated: header says shape (100, 3) float64 = 2400 bytes but only "
                         "1200 follow")

    def test_trailing_garbage(self):
        self.check_bad_x("trail.npy", npy_image(npy_header(shape=(6, 2)), b"\0" * 200),
                         "trailing data")

    def test_huge_shape(self):
        self.check_bad_x("huge.npy",
                         npy_image(npy_header(shape=(10**9, 10**9)), b"\0" * 96), "truncated")

    def test_overflowing_shape(self):
        self.check_bad_x("ovf.npy", npy_image(npy_header(shape=(2**40, 2**40)), b"\0" * 96),
                         "overflows")

    def test_negative_dims(self):
        self.check_bad_x("neg.npy", npy_image(npy_header(shape=(-6, 2)), b"\0" * 96),
                         "negative dimension")

    def test_header_length_overflow(self):
        self.check_bad_x("hl.npy", npy_image(npy_header(), b"\0" * 48, header_len=65535),
                         "header length")
        self.check_bad_x("hl2.npy",
                         npy_image(npy_header(), b"\0" * 48, version=(2, 0),
                                   header_len=2**32 - 1), "header length")

    def test_garbage_dict(self):
        self.check_bad_x("garbage.npy", npy_image("{'descr': <f8, shape: }", b"\0" * 96),
                         "corrupt .npy header")
        self.check_bad_x("unterminated.npy", npy_image("{'descr': '<f8", pad=False),
                         "unterminated string")
        self.check_bad_x("missing.npy",
                         npy_image("{'descr': '<f8', 'fortran_order': False}", b"\0" * 96),
                         "missing key 'shape'")
        self.check_bad_x("dup.npy",
                         npy_image("{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, "
                                   "'shape': (12,)}", b"\0" * 96), "duplicate key")
        self.check_bad_x("binary.npy", npy_image(bytes(range(1, 200)), b"\0" * 96),
                         "corrupt .npy header")

    def test_bad_version(self):
        self.check_bad_x("v9.npy", npy_image(npy_header(), b"\0" * 48, version=(9, 0)),
                         "version 9.0")

    def test_integer_dtype(self):
        p = self.save("int.npy", np.arange(12, dtype=np.int64).reshape(6, 2))
        self.assert_clean_failure(self.sinkhorn_with_x(p), "--x", "int.npy",
                                  "int64 ('<i8')", "expected float32 or float64")
        p = self.save("bool.npy", np.ones((6, 2), dtype=bool))
        self.assert_clean_failure(self.sinkhorn_with_x(p), "bool.npy", "bool")
        p = self.save("c.npy", np.ones((6, 2), dtype=np.complex128))
        self.assert_clean_failure(self.sinkhorn_with_x(p), "c.npy", "complex128")

    def test_object_array(self):
        p = self.path("obj.npy")
        np.save(p, np.array([[1, "a"]], dtype=object), allow_pickle=True)
        self.assert_clean_failure(self.sinkhorn_with_x(p), "obj.npy", "object")

    def test_fortran_order(self):
        p = self.save("fort.npy", np.asfortranarray(np.ones((6, 2))))
        self.assert_clean_failure(self.sinkhorn_with_x(p), "fort.npy", "C order")

    def test_nan_and_inf_in_data(self):
        x = np.zeros((6, 2))
        x[3, 1] = np.nan
        self.assert_clean_failure(self.sinkhorn_with_x(self.save("nan.npy", x)), "--x",
                                  "nan.npy", "[3, 1]", "nan")
        y = np.zeros((5, 2), dtype=np.float32)
        y[4, 0] = np.inf
        self.assert_clean_failure(["sinkhorn", "--x", self.xp, "--y", self.save("inf.npy", y),
                                   "--eps", "1"], "--y", "inf.npy", "inf")

    def test_wrong_rank_and_empty(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.save("r1.npy", np.ones(6))),
                                  "r1.npy", "(6,)")
        self.assert_clean_failure(self.sinkhorn_with_x(self.save("r4.npy", np.ones((1, 1, 6, 2)))),
                                  "r4.npy")
        self.assert_clean_failure(self.sinkhorn_with_x(self.save("e.npy", np.ones((0, 2)))),
                                  "e.npy", "empty")

    # -- shapes across files -----------------------------------------------------------
    def test_dimension_mismatch(self):
        p = self.save("x3.npy", np.ones((6, 3)))
        self.assert_clean_failure(self.sinkhorn_with_x(p), "--x", "--y", "x3.npy")

    def test_rank_and_batch_mismatch(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.save("xb.npy", np.ones((2, 6, 2)))),
                                  "xb.npy")
        self.assert_clean_failure(["sinkhorn", "--x", self.save("x2.npy", np.ones((2, 6, 2))),
                                   "--y", self.save("y3.npy", np.ones((3, 5, 2))), "--eps", "1"],
                                  "batch")

    def test_weight_mismatch(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--a",
                                                       self.save("a.npy", np.ones(5) / 5)),
                                  "--a", "a.npy")
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--b",
                                                       self.save("b.npy", np.ones(6) / 6)),
                                  "--b", "b.npy")
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--a",
                                                       self.save("neg.npy", -np.ones(6))),
                                  "--a", "neg.npy", "non-negative")

    def test_unequal_masses_balanced(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--a", self.save("a.npy",
                                                                                 np.ones(6))))

    # -- flags --------------------------------------------------------------------------
    def test_unknown_flag(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--frobnicate"), "--frobnicate")

    def test_missing_required_flag(self):
        self.assert_clean_failure(["sinkhorn", "--x", self.xp, "--y", self.yp], "--eps")
        self.assert_clean_failure(["sinkhorn", "--x", self.xp, "--eps", "1"], "--y")
        self.assert_clean_failure(["sinkhorn", "--eps", "1"], "--x", "--cost-matrix")
        self.assert_clean_failure([], "subcommand")

    def test_bad_numbers(self):
        for flag, value in [("--eps", "abc"), ("--eps", "-1"), ("--eps", "0"), ("--eps", "nan"),
                            ("--eps", "inf"), ("--tol", "-1e-3"), ("--max-iter", "0"),
                            ("--max-iter", "1.5"), ("--check-every", "-1"),
                            ("--rho-a", "0"), ("--rho-b", "-2"), ("--threads", "-1"),
                            ("--device", "-1"), ("--seed", "-1"), ("--seed", "x"),
                            ("--eps-init", "-1"), ("--eps-decay", "1.5")]:
            with self.subTest(flag=flag, value=value):
                args = ["sinkhorn", "--x", self.xp, "--y", self.yp, "--eps", "0.1"]
                if flag == "--eps":
                    args = args[:-2]
                if flag == "--seed":
                    args += ["--sample-out", self.path("s.npy")]
                if flag == "--eps-decay":
                    args += ["--eps-init", "1"]
                self.assert_clean_failure([*args, flag, value], flag)

    def test_bad_choices(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--backend", "gpu"),
                                  "--backend", "gpu")
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--cost", "manhattan"),
                                  "--cost", "manhattan")

    def test_cost_matrix_and_points_exclusive(self):
        c = self.save("C.npy", np.ones((6, 5)))
        self.assert_clean_failure(["sinkhorn", "--cost-matrix", c, "--x", self.xp, "--y",
                                   self.yp, "--eps", "1"], "--cost-matrix")
        self.assert_clean_failure(["sinkhorn", "--cost-matrix", c, "--eps", "1", "--map-out",
                                   self.path("T.npy")], "--map-out")
        self.assert_clean_failure(["sinkhorn", "--cost-matrix", c, "--eps", "1", "--cost",
                                   "euclidean"], "--cost")

    def test_no_eps_scaling_excludes_schedule_flags(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--no-eps-scaling",
                                                       "--eps-decay", "0.5"),
                                  "--no-eps-scaling", "--eps-decay")

    def test_unwritable_output(self):
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--f-out",
                                                       self.path("no/such/f.npy")), "--f-out")
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--g-out", self.tmp), "--g-out",
                                  "directory")

    def test_cuda_without_gpu(self):
        if not cpu_only():
            self.skipTest("a GPU is usable here")
        self.assert_clean_failure(self.sinkhorn_with_x(self.xp, "--backend", "cuda"), "cuda")


class Outcome(CliTestCase):
    """Library defaults, the non-convergence warning, --strict, progress, and the
    labels of what "converged" means."""

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(77)
        self.x = rng.normal(size=(30, 2))
        self.y = rng.normal(size=(25, 2)) + 0.5
        self.xp = self.save("x.npy", self.x)
        self.yp = self.save("y.npy", self.y)
        self.base = ["sinkhorn", "--x", self.xp, "--y", self.yp, "--eps", "0.01",
                     "--backend", "cpu"]

    def test_library_defaults_converge_and_report_tol(self):
        # No --tol, --max-iter or schedule flags: the library's defaults (fp64 CPU
        # tol 1e-6) must converge, and the JSON says which tol was used.
        out = self.run_json(self.base)
        p = out["problems"][0]
        self.assertTrue(p["converged"], p)
        self.assertEqual(p["tol"], 1e-6)
        self.assertLessEqual(p["marginal_error"], 1e-6)

    def test_warning_when_a_problem_did_not_converge(self):
        proc = self.run_ok([*self.base, "--max-iter", "5", "--json"])
        out = json.loads(proc.stdout)
        self.assertFalse(out["problems"][0]["converged"])
        lines = proc.stderr.splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("otgpu: warning: 1 of 1 problem(s) did not "
                                            "converge ("), lines[0])
        self.assertIn("--strict", lines[0])

    def test_strict_exits_3_after_writing_the_result(self):
        f_out = self.path("f.npy")
        proc = run_otgpu([*self.base, "--max-iter", "5", "--strict", "--json",
                          "--f-out", f_out])
        self.assertEqual(proc.returncode, 3, proc.stderr)
        self.assertFalse(json.loads(proc.stdout)["problems"][0]["converged"])
        self.assertIn("did not converge", proc.stderr)
        self.assertEqual(np.load(f_out).shape, (30,))
        # Converged problems: --strict changes nothing.
        ok = run_otgpu([*self.base, "--strict"])
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertEqual(ok.stderr, "")

    def test_progress_goes_to_stderr_never_to_json_stdout(self):
        proc = self.run_ok([*self.base[:5], "--eps", "0.0005", "--eps-relative",
                            "--progress", "--json"])
        json.loads(proc.stdout)  # stdout is exactly the JSON object
        self.assertIn("otgpu: sinkhorn", proc.stderr)
        self.assertIn("residual", proc.stderr)
        # Not a terminal and no --progress: silent.
        quiet = self.run_ok([*self.base, "--json"])
        self.assertEqual(quiet.stderr, "")

    def test_table_has_residual_and_labels_unbalanced_convergence(self):
        proc = self.run_ok([*self.base, "--rho-a", "0.5", "--rho-b", "0.5"])
        header = proc.stdout.splitlines()[0].split()
        self.assertIn("residual", header)
        row = dict(zip(header, proc.stdout.splitlines()[1].split()))
        self.assertEqual(row["converged"], "yes")
        self.assertGreater(float(row["marginal_error"]), 1e-3)
        self.assertLessEqual(float(row["residual"]), 1e-6)
        self.assertIn("converged: residual <= tol", proc.stdout)
        self.assertIn("unbalanced", proc.stdout)

    def test_acceleration_flag(self):
        fast = self.run_json([*self.base, "--acceleration", "overrelax"])["problems"][0]
        plain = self.run_json([*self.base, "--acceleration", "none"])["problems"][0]
        self.assertTrue(fast["converged"] and plain["converged"])
        self.assertLessEqual(fast["iterations"], plain["iterations"])
        self.assertAlmostEqual(fast["ot_eps"], plain["ot_eps"], delta=1e-6 * abs(plain["ot_eps"]))
        self.assert_clean_failure([*self.base, "--acceleration", "anderson"], "--acceleration")

    def test_hostile_numbers_give_one_clear_error_or_a_correct_value(self):
        big = self.save("big.npy", self.x * 1e200)
        self.assert_clean_failure(["sinkhorn", "--x", big, "--y", self.save(
            "bigy.npy", self.y * 1e200), "--eps", "0.1"], "cost", "overflows")
        self.assert_clean_failure([*self.base[:5], "--eps", "1e-30", "--eps-relative"],
                                  "eps", "working range")
        self.assert_clean_failure([*self.base[:5], "--eps", "1e300", "--eps-relative"],
                                  "eps", "working range")
        # eps = 1e12 x the mean cost: OT_eps is the mean cost <a (x) b, C>.
        C = ((self.x[:, None] - self.y[None]) ** 2).sum(-1)
        p = self.run_json([*self.base[:5], "--eps", "1e12", "--eps-relative"])["problems"][0]
        self.assertTrue(p["converged"])
        self.assertAlmostEqual(p["ot_eps"], C.mean(), delta=1e-9 * C.mean())



if __name__ == "__main__":
    unittest.main()
