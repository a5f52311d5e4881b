"""One command-line vocabulary across `otgpu sinkhorn`, `sliced` and `gaussian` (bench
has its own checks in test_bench_cli): --json prints the JSON object on stdout,
--json-file FILE writes it (and the table still prints), `--json FILE` is an error
pointing to --json-file; --seed is one typed unsigned 64-bit parser; no output is
written over an input file, and no two outputs name one file.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_cli_vocabulary   (from tests/python)
"""

import json
import os
import unittest

import numpy as np

from otgpu_testutil import CliTestCase

U64_MAX = 2**64 - 1


class Vocabulary(CliTestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(99)
        self.x = self.save("x.npy", rng.random((9, 3)))
        self.y = self.save("y.npy", rng.random((7, 3)) + 0.1)
        self.m = self.save("m.npy", np.zeros(2))
        self.s = self.save("s.npy", np.eye(2))
        self.s2 = self.save("s2.npy", np.diag([2.0, 0.5]))
        self.commands = {
            "sinkhorn": ["sinkhorn", "--x", self.x, "--y", self.y, "--eps", "0.5", "--backend",
                         "cpu"],
            "sliced": ["sliced", "--x", self.x, "--y", self.y, "--backend", "cpu", "-L", "8"],
            "gaussian": ["gaussian", "--m1", self.m, "--s1", self.s, "--m2", self.m, "--s2",
                         self.s2, "--backend", "cpu"],
        }
        self.sizes = {"sinkhorn": {"B": 1, "n": 9, "m": 7, "d": 3},
                      "sliced": {"B": 1, "n": 9, "m": 7, "d": 3},
                      "gaussian": {"B": 1, "d": 2}}

    def test_json_on_stdout_with_sizes_and_options(self):
        for name, args in self.commands.items():
            with self.subTest(command=name):
                out = self.run_json(args)
                self.assertEqual(out["command"], name)
                for k, v in self.sizes[name].items():
                    self.assertEqual(out[k], v, k)
                self.assertIsInstance(out["options"], dict)
                self.assertEqual(out["options"]["backend"], "cpu")
                self.assertEqual(len(out["problems"]), 1)

    def test_json_file_writes_the_same_object_and_keeps_the_table(self):
        for name, args in self.commands.items():
            with self.subTest(command=name):
                path = self.path(f"{name}.json")
                table = self.run_ok([*args, "--json-file", path]).stdout
                self.assertFalse(table.lstrip().startswith("{"), table)
                with open(path, encoding="utf-8") as fh:
                    written = json.load(fh)
                stdout = self.run_json(args)
                # Same keys and values except the timing.
                written.pop("time_ms")
                stdout.pop("time_ms")
                self.assertEqual(written, stdout)
                # --json and --json-file together: stdout JSON and the file.
                both = self.path(f"{name}-both.json")
                self.run_json([*args, "--json-file", both])
                self.assertTrue(os.path.exists(both))

    def test_json_takes_no_file(self):
        for name, args in self.commands.items():
            with self.subTest(command=name):
                target = self.path(f"{name}.json")
                self.assert_clean_failure([*args, "--json", target], "--json-file",
                                          f"{name}.json")
                self.assert_clean_failure([*args, f"--json={target}"], "--json-file")
                self.assertFalse(os.path.exists(target))

    def test_seed_is_one_typed_parser(self):
        sinkhorn = [*self.commands["sinkhorn"], "--sample-out", self.path("s.npy")]
        for base in (sinkhorn, self.commands["sliced"]):
            for bad in ("-1", str(2**64), "abc", "1.5", "", " 3", "0x10"):
                with self.subTest(command=base[0], seed=bad):
                    self.assert_clean_failure([*base, "--seed", bad], "--seed",
                                              f"[0, {U64_MAX}]", f"'{bad}'")
            self.run_ok([*base, "--seed", str(U64_MAX)])
        out = self.run_json([*self.commands["sliced"], "--seed", str(U64_MAX)])
        self.assertEqual(out["options"]["seed"], U64_MAX)

    def test_device_and_threads_are_typed(self):
        for name in ("sinkhorn", "sliced"):
            for flag in ("--device", "--threads"):
                for bad in ("-1", "1.5", "x"):
                    with self.subTest(command=name, flag=flag, value=bad):
                        self.assert_clean_failure([*self.commands[name], flag, bad], flag,
                                                  f"'{bad}'")

    def assert_input_untouched(self, path, args, *mentions):
        with open(path, "rb") as fh:
            before = fh.read()
        self.assert_clean_failure(args, *mentions)
        with open(path, "rb") as fh:
            self.assertEqual(fh.read(), before, f"{path} was modified")

    def test_no_output_over_an_input(self):
        sk, sl, ga = (self.commands[k] for k in ("sinkhorn", "sliced", "gaussian"))
        self.assert_input_untouched(self.x, [*sk, "--f-out", self.x], "--f-out", "--x",
                                    "input")
        self.assert_input_untouched(self.y, [*sk, "--map-out", self.y], "--map-out", "--y")
        # Another spelling of the same file, and a symbolic link to it.
        dotted = os.path.join(os.path.dirname(self.x), ".", os.path.basename(self.x))
        self.assert_input_untouched(self.x, [*sk, "--g-out", dotted], "--g-out", "--x")
        link = self.path("link.npy")
        os.symlink(self.y, link)
        self.assert_input_untouched(self.y, [*sl, "--grad-out", link], "--grad-out", "--y")
        self.assert_input_untouched(self.x, [*sl, "--json-file", self.x], "--json-file", "--x")
        self.assert_input_untouched(self.s, [*ga, "--map-out", self.s], "--map-out", "--s1")
        self.assert_input_untouched(self.s2, [*ga, "--json-file", self.s2], "--json-file",
                                    "--s2")

    def test_two_outputs_never_name_one_file(self):
        out = self.path("out.npy")
        self.assert_clean_failure([*self.commands["sinkhorn"], "--f-out", out, "--g-out", out],
                                  "--f-out", "--g-out", "out.npy")
        self.assert_clean_failure([*self.commands["sliced"], "--grad-out", out, "--grad-y-out",
                                   out], "--grad-out", "--grad-y-out")
        self.assert_clean_failure([*self.commands["gaussian"], "--map-out", out, "--json-file",
                                   out], "--map-out", "--json-file")
        self.assertFalse(os.path.exists(out))


    def test_unknown_command_is_named_with_the_valid_ones(self):
        line = self.assert_clean_failure(["frobnicate"], "unknown command 'frobnicate'",
                                         "sinkhorn", "sliced", "gaussian", "bench", "plan")
        self.assertNotIn("subcommand is required", line)

    def test_numbers_that_do_not_convert_say_why(self):
        base = self.commands["sinkhorn"]
        # An integer past the int range: the range, not CLI11's "Could not convert".
        line = self.assert_clean_failure(base + ["--max-iter", "1000000000000"], "--max-iter",
                                         "1000000000000", "out of range", "2147483647")
        self.assertNotIn("Could not convert", line)
        # Not a number at all, for a floating-point and an integer flag.
        self.assert_clean_failure(base[:5] + ["--eps", "abc"], "--eps", "expected a number",
                                  "'abc'")
        self.assert_clean_failure(base + ["--check-every", "x1"], "--check-every",
                                  "expected a number")


if __name__ == "__main__":
    unittest.main()
