"""`otgpu sinkhorn --devices` / `--shards`: the messages that need no GPU, and, where a
GPU is usable, logical shards on device 0 against the single-device command.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_sinkhorn_devices_cli
"""
import unittest

import numpy as np

from otgpu_testutil import CliTestCase, run_otgpu


def has_gpu():
    """True when `otgpu plan --backend auto` plans for a CUDA device."""
    proc = run_otgpu(["plan", "--n", "8", "--d", "2", "--json"])
    return proc.returncode == 0 and '"backend":"cuda"' in proc.stdout


class SinkhornDevicesCliTest(CliTestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(3)
        self.xp = self.save("x.npy", rng.normal(size=(700, 3)))
        self.yp = self.save("y.npy", rng.normal(size=(620, 3)) + 0.5)
        self.base = ["sinkhorn", "--x", self.xp, "--y", self.yp, "--eps", "0.05",
                     "--eps-relative", "--tol", "1e-4"]

    def test_bad_ordinal_names_the_flag(self):
        self.assert_clean_failure([*self.base, "--devices", "0,x"], "--devices", "'x'")

    def test_cpu_backend_with_devices(self):
        self.assert_clean_failure([*self.base, "--backend", "cpu", "--devices", "0,1"],
                                  "devices", "backend is cpu")

    def test_more_shards_than_rows(self):
        x2 = self.save("x2.npy", np.zeros((2, 3)))
        self.assert_clean_failure(
            ["sinkhorn", "--x", x2, "--y", self.yp, "--eps", "0.1", "--shards", "3"],
            "3 shards", "n = 2")

    def test_shards_and_distributed_exclude_each_other(self):
        self.assert_clean_failure([*self.base, "--shards", "2", "--distributed"],
                                  "--distributed", "--shards")

    def test_no_device_is_a_clean_error(self):
        if has_gpu():
            self.skipTest("a GPU is usable")
        self.assert_clean_failure([*self.base, "--devices", "0,1"], "devices[0] is 0")

    def test_logical_shards_match_one_device(self):
        if not has_gpu():
            self.skipTest("no usable GPU")
        one = self.run_json([*self.base, "--backend", "cuda", "--json"])
        f1, f3 = self.path("f1.npy"), self.path("f3.npy")
        self.run_ok([*self.base, "--backend", "cuda", "--f-out", f1])
        three = self.run_json([*self.base, "--backend", "cuda", "--shards", "3",
                               "--f-out", f3, "--json"])
        self.assertEqual(three["options"]["devices"], [0, 0, 0])
        self.assertEqual(three["problems"][0]["iterations"], one["problems"][0]["iterations"])
        a, b = np.load(f1), np.load(f3)
        self.assertEqual(a.shape, b.shape)
        self.assertLess(np.max(np.abs(a - b)), 1e-3 * max(1.0, np.max(np.abs(a))))


if __name__ == "__main__":
    unittest.main()
