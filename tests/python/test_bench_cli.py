"""End-to-end tests of `otgpu bench`: the workload list, the JSON and CSV schemas, the
readable table (120 columns, rounded numbers, footnotes, skipped GPU rows), the plot,
and the errors. One small CPU run (W5 limits, W1 CPU rows, W1d, W3 CPU row, TTS) is
shared by the schema tests.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_bench_cli   (from tests/python)
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from otgpu_testutil import CliTestCase, run_otgpu

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "plot-bench")
ALL_WORKLOADS = ("W1", "W1d", "W1tc", "W2", "W3", "W4", "W4e", "W5", "W6", "TTS", "L1")
ROW_KEYS = {"workload", "solver", "backend", "params", "status", "skipped_reason", "time_ms",
            "time_unit", "figure", "figure_unit", "roofline", "bound", "ratio", "bound_ms",
            "result", "notes"}
CSV_HEADER = ["workload", "solver", "backend", "status", "params", "time_ms", "time_unit",
              "figure", "figure_unit", "bound", "roofline", "ratio", "bound_ms", "result",
              "notes"]


def have_matplotlib():
    return subprocess.run(["python3", "-c", "import matplotlib"], capture_output=True,
                          check=False).returncode == 0


class BenchRun(unittest.TestCase):
    """One CPU run written as table, JSON file, CSV file (and a plot when possible)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="otgpu_bench_test_")
        cls.json_path = os.path.join(cls.tmp, "bench.json")
        cls.csv_path = os.path.join(cls.tmp, "bench.csv")
        cls.png_path = os.path.join(cls.tmp, "bench.png")
        args = ["bench", "--backend", "cpu", "--repeats", "1", "--workload", "W5", "W1", "W1d",
                "W3", "TTS", "--json-file", cls.json_path, "--csv-file", cls.csv_path]
        if have_matplotlib():
            args += ["--plot", cls.png_path]
        cls.proc = run_otgpu(args, timeout=600)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        with open(self.json_path, encoding="utf-8") as fh:
            self.report = json.load(fh)
        self.rows = self.report["rows"]

    def rows_of(self, workload):
        return [r for r in self.rows if r["workload"] == workload]

    def test_json_schema(self):
        r = self.report
        self.assertEqual(r["schema"], "otgpu-bench/2")
        self.assertEqual(r["suite"], "quick")
        self.assertEqual(r["repeats"], 1)
        for key in ("commit", "build_type", "compiler", "cuda_toolkit"):
            self.assertIn(key, r["build"])
        self.assertGreater(r["limits"]["cpu_pair_per_s"], 0)
        self.assertGreater(r["limits"]["cpu_exp_per_s"], 0)
        self.assertIsNone(r["limits"]["gpu_exp_per_s"])  # --backend cpu: not measured
        self.assertEqual([w for w in dict.fromkeys(row["workload"] for row in self.rows)],
                         ["W5", "W1", "W1d", "W3", "TTS"])
        for row in self.rows:
            self.assertEqual(set(row), ROW_KEYS, row)
            self.assertIn(row["status"], ("ok", "skipped"))
            self.assertIsInstance(row["params"], dict)
            self.assertIsInstance(row["notes"], list)

    def test_limits_are_figures_without_ratio(self):
        w5 = self.rows_of("W5")
        self.assertEqual({r["solver"] for r in w5 if r["status"] == "ok"},
                         {"cpu-exp", "cpu-fma", "cpu-copy", "cpu-pair"})
        for r in w5:
            self.assertIsNone(r["ratio"], r)
            self.assertIsNone(r["roofline"], r)
            if r["status"] == "ok":
                self.assertGreater(r["figure"], 0)

    def test_cpu_rows_count_pairs_against_the_pair_sweep(self):
        w1 = [r for r in self.rows_of("W1") if r["status"] == "ok"]
        self.assertEqual([r["params"]["d"] for r in w1], [2, 64])
        pair = self.report["limits"]["cpu_pair_per_s"]
        for r in w1:
            n, m = r["params"]["n"], r["params"]["m"]
            self.assertEqual((r["figure_unit"], r["bound"], r["time_unit"]),
                             ("pair/s", "pair", "ms/iter"))
            self.assertAlmostEqual(r["figure"], 2 * n * m / (r["time_ms"] * 1e-3),
                                   delta=1e-9 * r["figure"])
            self.assertEqual(r["roofline"], pair)
            self.assertAlmostEqual(r["ratio"], r["figure"] / pair, delta=1e-12)
            self.assertAlmostEqual(r["bound_ms"], 2 * n * m / pair * 1e3,
                                   delta=1e-9 * r["bound_ms"])

    def test_gpu_work_is_listed_as_skipped(self):
        skipped = [r for r in self.rows if r["status"] == "skipped"]
        self.assertEqual({r["workload"] for r in skipped}, {"W5", "W1", "W1d", "W3", "TTS"})
        for r in skipped:
            self.assertEqual(r["backend"], "cuda")
            self.assertEqual(r["skipped_reason"], "--backend cpu")
            self.assertIsNone(r["time_ms"])
        self.assertEqual([r["status"] for r in self.rows_of("W1d")], ["skipped"])

    def test_time_to_solution_rows(self):
        ran = [r for r in self.rows_of("TTS") if r["status"] == "ok"]
        self.assertEqual([r["solver"] for r in ran], ["cpu-default", "cpu-plain"] * 3)
        tts = [r for r in ran if r["solver"] == "cpu-default"]
        plain = [r for r in ran if r["solver"] == "cpu-plain"]
        self.assertEqual([r["params"]["eps_rel"] for r in tts], [0.1, 0.01, 0.001])
        for d, p in zip(tts, plain):
            self.assertEqual(p["params"], d["params"])
            self.assertAlmostEqual(p["result"]["plain_over_default"],
                                   p["result"]["iterations"] / d["result"]["iterations"])
        for r in tts:
            self.assertGreater(r["time_ms"], 0)
            self.assertIsInstance(r["result"]["iterations"], int)
            self.assertGreater(r["result"]["iterations"], 0)
            self.assertIsInstance(r["result"]["converged"], bool)
            self.assertGreaterEqual(r["result"]["marginal_error"], 0)
        # The largest eps converges with the library's defaults.
        self.assertTrue(tts[0]["result"]["converged"])

    def test_csv_matches_json(self):
        with open(self.csv_path, encoding="utf-8", newline="") as fh:
            table = list(csv.reader(fh))
        self.assertEqual(table[0], CSV_HEADER)
        body = table[1:]
        self.assertEqual(len(body), len(self.rows))
        for line, row in zip(body, self.rows):
            rec = dict(zip(CSV_HEADER, line))
            self.assertEqual((rec["workload"], rec["solver"], rec["backend"]),
                             (row["workload"], row["solver"], row["backend"]))
            if row["time_ms"] is None:
                self.assertEqual(rec["time_ms"], "")
            else:
                self.assertEqual(float(rec["time_ms"]), row["time_ms"])
            self.assertTrue(rec["status"] == "ok" or rec["status"].startswith("skipped"), rec)
            for k, v in row["params"].items():
                self.assertIn(f"{k}=", rec["params"])

    def test_table_is_readable(self):
        out = self.proc.stdout
        lines = out.splitlines()
        for line in lines:
            self.assertLessEqual(len(line), 120, line)
        self.assertIn("skipped (--backend cpu)", out)
        self.assertIn("(limit)", out)
        # Footnotes under the table, referenced from the note column.
        self.assertTrue(any(line.startswith("[1] ") for line in lines), out)
        self.assertNotIn("%)", out)
        # Rounded: no number with more than 4 significant digits in the table.
        for token in re.findall(r"\d+\.\d+", out):
            digits = token.replace(".", "").lstrip("0")
            self.assertLessEqual(len(digits), 4, f"{token} in\n{out}")
        # W5 rows are limits: never a percentage of themselves.
        for line in lines:
            if line.startswith(("cpu-exp", "cpu-fma", "cpu-copy", "cpu-pair")):
                self.assertNotIn("%", line)

    def test_plot(self):
        if not have_matplotlib():
            self.skipTest("matplotlib is not installed")
        with open(self.png_path, "rb") as fh:
            self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")


class BenchCommand(CliTestCase):

    def test_list_names_every_workload(self):
        out = self.run_ok(["bench", "--list"]).stdout
        lines = out.splitlines()
        names = [line.split()[0] for line in lines]
        self.assertEqual(sorted(names), sorted(ALL_WORKLOADS))
        for line in lines:
            # Every workload is implemented: none may read "not implemented yet".
            self.assertIn("quick,full", line)
            self.assertGreater(len(line.split(None, 2)[2]), 20, line)

    def test_unknown_workload(self):
        line = self.assert_clean_failure(["bench", "--workload", "W9"], "--workload", "'W9'",
                                         "--list")
        for name in ALL_WORKLOADS:
            self.assertIn(name, line)

    def test_json_is_a_flag(self):
        self.assert_clean_failure(["bench", "--json", self.path("b.json")], "--json-file",
                                  "b.json")
        self.assertFalse(os.path.exists(self.path("b.json")))
        self.assert_clean_failure(["bench", "--json", "--csv"], "--json", "--csv")
        out = self.run_json(["bench", "--backend", "cpu", "--workload", "W5", "--repeats", "1"])
        self.assertEqual({r["workload"] for r in out["rows"]}, {"W5"})

    def test_csv_to_stdout(self):
        proc = self.run_ok(["bench", "--backend", "cpu", "--workload", "W5", "--csv"])
        rows = list(csv.reader(io.StringIO(proc.stdout)))
        self.assertEqual(rows[0], CSV_HEADER)
        self.assertEqual({r[0] for r in rows[1:]}, {"W5"})

    def test_outputs_must_differ(self):
        same = self.path("same.txt")
        self.assert_clean_failure(["bench", "--json-file", same, "--csv-file", same],
                                  "--json-file", "--csv-file", "same.txt")
        self.assert_clean_failure(["bench", "--csv-file", self.path("no/such/dir/x.csv")],
                                  "--csv-file")

    def test_plot_needs_python_and_matplotlib(self):
        png = self.path("p.png")
        env = dict(os.environ, OTGPU_PYTHON=self.path("no-such-python"))
        proc = subprocess.run([os.environ["OTGPU_BIN"], "bench", "--plot", png], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(proc.returncode, 1)
        self.assertRegex(proc.stderr, r"^otgpu: error: --plot: .*no-such-python was not found")
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)
        # A python3 whose `import matplotlib` fails (a stub package shadows it).
        stub = os.path.join(self.tmp, "stub", "matplotlib")
        os.makedirs(stub)
        with open(os.path.join(stub, "__init__.py"), "w", encoding="utf-8") as fh:
            fh.write("raise ImportError('stub')\n")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(stub))
        proc = subprocess.run([os.environ["OTGPU_BIN"], "bench", "--plot", png], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(proc.returncode, 1)
        self.assertRegex(proc.stderr, r"^otgpu: error: --plot: .*cannot import matplotlib")
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)
        self.assertFalse(os.path.exists(png))

    def test_plot_script_rejects_a_non_report(self):
        bad = self.path("bad.json")
        with open(bad, "w", encoding="utf-8") as fh:
            fh.write('{"rows": 3}')
        proc = subprocess.run(["python3", SCRIPT, bad, self.path("x.png")], capture_output=True,
                              text=True, timeout=60, check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)
        self.assertIn("plot-bench: ", proc.stderr)


if __name__ == "__main__":
    unittest.main()
