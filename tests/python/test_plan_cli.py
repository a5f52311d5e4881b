"""End-to-end checks of `otgpu plan`: the plan and the roofline estimate of one
Sinkhorn iteration, printed without running anything. The expected figures are
recomputed here from their definitions (exponentials per iteration, bytes of the cost
matrix, batch chunks of at most 65,535 problems, the padding rule), independently of
the planner's code.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_plan_cli   (from tests/python)
"""

import unittest

from otgpu_testutil import CliTestCase, run_otgpu

H200_EXP_PER_S = 132 * 16 * 1.98e9
H200_BYTES_PER_S = 4.8e12


def padded(d):
    if d <= 64:
        p = 1
        while p < d:
            p *= 2
        return p
    return (d + 3) // 4 * 4


def has_gpu():
    """True when `otgpu plan --backend auto` plans for a CUDA device."""
    proc = run_otgpu(["plan", "--n", "8", "--d", "2", "--json"])
    return proc.returncode == 0 and '"backend":"cuda"' in proc.stdout


class PlanCliTest(CliTestCase):

    def cuda_plan(self, *args):
        return self.run_json(["plan", "--backend", "cuda", *args])

    def test_cpu_plan_without_gpu(self):
        if has_gpu():
            self.skipTest("a GPU is usable: auto plans for it")
        j = self.run_json(["plan", "--n", "300", "--m", "500", "--d", "3", "--batch", "2",
                           "--threads", "3"])
        self.assertEqual(j["backend"], "cpu")
        self.assertEqual(j["kernel"], "cpu-reference")
        self.assertEqual(j["cpu_threads"], 3)
        self.assertEqual(j["iteration"]["exps"], 2 * 2 * 300 * 500)
        self.assertTrue(j["iteration"]["rates_assumed"])
        self.assertGreaterEqual(j["host_bytes"], 2 * (300 + 500) * 3 * 8)

    def test_cpu_plan_backend_flag(self):
        j = self.run_json(["plan", "--n", "100", "--d", "2", "--backend", "cpu"])
        self.assertEqual(j["backend"], "cpu")
        self.assertEqual(j["problem"]["m"], 100, "--m defaults to --n")

    def test_cuda_plan_states_what_is_assumed(self):
        j = self.cuda_plan("--n", "10000", "--m", "20000", "--d", "2")
        self.assertEqual(j["backend"], "cuda")
        self.assertEqual(j["kernel"], "online")
        self.assertEqual(j["device_count"], 1)
        self.assertEqual(j["padded_d"], 2)
        it = j["iteration"]
        # one ex2 per pair plus a rescale per chunk of 16 (online kernel, padded d <= 4)
        self.assertEqual(it["exps"], 2 * 10000 * 20000 * 1.0625)
        if j["assumed"]:
            self.assertIn("H200", j["device"])
            self.assertTrue(it["rates_assumed"])
            self.assertEqual(it["bound"], "exp")
            self.assertAlmostEqual(it["seconds"], it["exps"] / H200_EXP_PER_S, delta=1e-12)
            text = self.run_ok(["plan", "--backend", "cuda", "--n", "10000", "--m", "20000",
                                "--d", "2"]).stdout
            self.assertIn("[properties assumed]", text)
            self.assertIn("H200", text)

    def test_kernel_boundaries(self):
        self.assertEqual(self.cuda_plan("--n", "512", "--d", "2", "--batch", "64")["kernel"],
                         "small")
        self.assertEqual(self.cuda_plan("--n", "513", "--d", "2", "--batch", "64")["kernel"],
                         "online")
        self.assertEqual(self.cuda_plan("--n", "64", "--d", "33")["kernel"], "online")
        self.assertEqual(self.cuda_plan("--n", "64", "--cost", "matrix")["kernel"], "dense")
        self.assertEqual(self.cuda_plan("--n", "2000", "--d", "65")["padded_d"], padded(65))
        # d = 1024 (a SIMT tile of 262 KB) and d = 3072 plan on tensor cores (any d).
        for d in ("1024", "3072"):
            j = self.cuda_plan("--n", "2000", "--d", d)
            self.assertEqual((j["kernel"], j["tensor_cores"], j["precision"]),
                             ("online", True, "fp32"))
        self.assertFalse(self.cuda_plan("--n", "2000", "--d", "8")["tensor_cores"])

    def test_dense_roofline_is_memory(self):
        j = self.cuda_plan("--n", "10000", "--m", "20000", "--cost", "matrix")
        self.assertEqual(j["iteration"]["bytes"], 2 * 10000 * 20000 * 4)
        if j["assumed"]:
            self.assertEqual(j["iteration"]["bound"], "memory")
            self.assertAlmostEqual(j["iteration"]["seconds"],
                                   2 * 10000 * 20000 * 4 / H200_BYTES_PER_S, delta=1e-12)

    def test_f64_cost_matrix_is_staged(self):
        # An f32 matrix is read in place; an f64 one is converted into the workspace.
        f32 = self.cuda_plan("--n", "1000", "--m", "700", "--cost", "matrix")
        f64 = self.cuda_plan("--n", "1000", "--m", "700", "--cost", "matrix", "--dtype", "f64")
        self.assertGreaterEqual(f64["workspace_bytes"] - f32["workspace_bytes"], 1000 * 700 * 4)
        self.assertEqual(f64["input_bytes"], (1000 * 700 + 1000 + 700) * 8)

    def test_large_batch_is_chunked(self):
        j = self.cuda_plan("--n", "600", "--d", "2", "--batch", "150000")
        chunks = j["chunks"]
        self.assertEqual(len(chunks), 3)
        self.assertEqual(sum(c["count"] for c in chunks), 150000)
        self.assertTrue(all(0 < c["count"] <= 65535 for c in chunks))
        self.assertEqual([c["begin"] for c in chunks],
                         [0, chunks[0]["count"], chunks[0]["count"] + chunks[1]["count"]])

    def test_splits_fill_the_last_wave(self):
        # One row block over a long column range: the planner splits the columns.
        j = self.cuda_plan("--n", "128", "--m", "1000000", "--d", "2")
        f = j["f_step"]
        self.assertGreater(f["splits"], 1)
        self.assertEqual(f["blocks"], f["row_blocks"] * f["splits"])
        self.assertEqual(f["waves"], -(-f["blocks"] // f["wave"]))
        self.assertGreater(f["last_wave_fill"], 0.9 if j["assumed"] else 0.5)

    def test_workspace_grows_with_the_problem(self):
        small = self.cuda_plan("--n", "1000", "--d", "4")["workspace_bytes"]
        big = self.cuda_plan("--n", "2000", "--d", "4")["workspace_bytes"]
        # The points alone: [n, 4] floats for x and y.
        self.assertGreaterEqual(small, 2 * 1000 * 4 * 4)
        self.assertGreaterEqual(big - small, 2 * 1000 * 4 * 4)

    def test_text_output(self):
        text = self.run_ok(["plan", "--n", "1000", "--d", "3", "--backend", "cuda"]).stdout
        for word in ("kernel", "workspace", "bound", "per iteration", "chunks"):
            self.assertIn(word, text)

    def test_errors_are_one_line(self):
        self.assert_clean_failure(["plan", "--n", "0", "--d", "2"], "--n: must be >= 1, got 0")
        self.assert_clean_failure(["plan", "--n", "10", "--d", "0"], "--d")
        self.assert_clean_failure(["plan", "--n", "10", "--d", "2", "--batch", "0"], "--batch")
        self.assert_clean_failure(["plan", "--n", "10", "--d", "2", "--cost", "cosine"], "--cost")
        self.assert_clean_failure(["plan", "--n", "10", "--d", "2", "--dtype", "f16"], "--dtype")
        self.assert_clean_failure(["plan", "--n", "10", "--d", "2", "--backend", "tpu"],
                                  "--backend")

    def test_out_of_memory_is_reported(self):
        proc = run_otgpu(["plan", "--backend", "cuda", "--n", "1000000", "--d", "256",
                          "--batch", "1000"])
        self.assertNotEqual(proc.returncode, 0)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("otgpu: error:"), lines[0])
        self.assertIn("bytes are free", lines[0])


if __name__ == "__main__":
    unittest.main()
