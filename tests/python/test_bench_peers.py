"""`otgpu bench --peers FILE` with a synthetic peers file (issue 10 item 4), and the peer
scripts' data generator and merge (bench/peers/).

Matching rule under test: an entry matches a row when the workload is equal and every
key of the entry's params equals the row's; among matching entries in the row's time
unit the fastest is the best peer; speedup = its time / ours.

Run: OTGPU_BIN=/path/to/otgpu python3 -m unittest -v test_bench_peers   (from tests/python)
"""

import csv
import json
import os
import subprocess
import sys
import unittest

import numpy as np

from otgpu_testutil import CliTestCase

PEERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench",
                         "peers")
PLOT_BENCH = os.path.join(PEERS_DIR, "..", "..", "scripts", "plot-bench")
sys.path.insert(0, PEERS_DIR)
import peer_common  # noqa: E402
import run_peers  # noqa: E402


def entry(params, peer, ms, unit="ms/iter", workload="W1", backend="cpu"):
    return {"workload": workload, "params": params, "peer": peer, "backend": backend, "ms": ms,
            "time_unit": unit, "version": "0.0-test"}


class BenchPeers(CliTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()

    def test_best_peer_columns_in_table_json_and_csv(self):
        peers = {"machine": "test", "date": "2026-01-01", "peers": [
            entry({"n": 1024, "d": 2}, "slow-peer", 5000.0),
            entry({"n": 1024, "m": 1024, "d": 2, "eps": 0.01}, "fast-peer", 4000.0),
            # another unit: never compared with a ms/iter row
            entry({"n": 1024, "d": 2}, "per-call-peer", 1e-6, unit="ms/call"),
            # a key the row lacks: no match
            entry({"n": 1024, "d": 2, "B": 7}, "batched-peer", 1e-6),
            # another workload with the same params: no match
            entry({"n": 1024, "d": 2}, "w2-peer", 1e-6, workload="W2"),
            entry({"n": 1024.0, "d": 64}, "d64-peer", 9000.0),
        ]}
        pfile = self.save_text("peers.json", json.dumps(peers))
        jpath, cpath = self.path("b.json"), self.path("b.csv")
        proc = self.run_ok(["bench", "--backend", "cpu", "--repeats", "1", "--workload", "W1",
                            "--peers", pfile, "--json-file", jpath, "--csv-file", cpath],
                           timeout=600)
        with open(jpath, encoding="utf-8") as fh:
            rows = [r for r in json.load(fh)["rows"] if r["workload"] == "W1"]
        ran = [r for r in rows if r["status"] == "ok"]
        self.assertEqual(len(ran), 2, rows)
        by_d = {r["params"]["d"]: r for r in ran}
        best2, best64 = by_d[2]["best_peer"], by_d[64]["best_peer"]
        self.assertEqual(best2["peer"], "fast-peer")
        self.assertEqual(best2["ms"], 4000.0)
        self.assertEqual(best64["peer"], "d64-peer")
        self.assertAlmostEqual(by_d[2]["speedup"], 4000.0 / by_d[2]["time_ms"], delta=1e-9)
        self.assertAlmostEqual(by_d[64]["speedup"], 9000.0 / by_d[64]["time_ms"], delta=1e-9)
        for r in rows:
            if r["status"] != "ok":
                self.assertIsNone(r["best_peer"])
        with open(cpath, encoding="utf-8", newline="") as fh:
            table = list(csv.reader(fh))
        self.assertEqual(table[0][-4:], ["best_peer", "peer_backend", "peer_ms", "speedup"])
        csv_peers = {row[table[0].index("best_peer")] for row in table[1:]}
        self.assertTrue({"fast-peer", "d64-peer"} <= csv_peers, csv_peers)
        header = next(line for line in proc.stdout.splitlines() if line.startswith("solver"))
        self.assertIn("best peer", header)
        self.assertIn("speedup", header)
        self.assertIn("fast-peer (cpu)", proc.stdout)
        # The roofline chart of the same report, with every peer of the file (PNG + SVG).
        if subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True,
                          check=False).returncode == 0:
            base = self.path("roof")
            plot = subprocess.run([sys.executable, PLOT_BENCH, "--roofline", jpath, base,
                                   "--peers", pfile], capture_output=True, text=True,
                                  check=False)
            self.assertEqual(plot.returncode, 0, plot.stderr)
            with open(base + ".png", "rb") as fh:
                self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")
            with open(base + ".svg", encoding="utf-8") as fh:
                self.assertIn("<svg", fh.read(2000))
            bad = subprocess.run([sys.executable, PLOT_BENCH, "--roofline", pfile, base],
                                 capture_output=True, text=True, check=False)
            self.assertEqual(bad.returncode, 1, bad.stderr)
            self.assertIn("not an otgpu bench report", bad.stderr)

    def test_roofline_takes_rows_without_n(self):
        # W4/W4e rows are sized by bs (and K), limit-like rows by nothing: the chart must
        # still draw them (it raised KeyError 'n' on every CPU quick report).
        if subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True,
                          check=False).returncode != 0:
            self.skipTest("matplotlib is not installed")
        rows = [
            {"workload": "W4", "solver": "cpu-jv", "params": {"bs": 256, "d": 64},
             "status": "ok", "time_ms": 2.0, "bound_ms": 0.5, "time_unit": "ms/call"},
            {"workload": "W4", "solver": "cpu-jv", "params": {"K": 64, "bs": 256, "d": 64},
             "status": "ok", "time_ms": 70.0, "bound_ms": 9.0, "time_unit": "ms/call"},
            {"workload": "W6", "solver": "cpu-local-G2", "params": {"G": 2, "d": 64},
             "status": "ok", "time_ms": 10.0, "bound_ms": 1.5, "time_unit": "ms/iter"},
            {"workload": "W1", "solver": "cpu-reference",
             "params": {"n": 1024, "m": 1024, "d": 2}, "status": "ok", "time_ms": 15.0,
             "bound_ms": 2.4, "time_unit": "ms/iter"},
        ]
        jpath = self.save_text("rows.json", json.dumps({"suite": "quick", "device": "none",
                                                        "rows": rows}))
        base = self.path("roof-w4")
        plot = subprocess.run([sys.executable, PLOT_BENCH, "--roofline", jpath, base],
                              capture_output=True, text=True, check=False)
        self.assertEqual(plot.returncode, 0, plot.stderr)
        with open(base + ".png", "rb") as fh:
            self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")
        plain = subprocess.run([sys.executable, PLOT_BENCH, jpath, self.path("w4.png")],
                               capture_output=True, text=True, check=False)
        self.assertEqual(plain.returncode, 0, plain.stderr)

    def test_without_peers_no_peer_columns(self):
        jpath = self.path("b.json")
        self.run_ok(["bench", "--backend", "cpu", "--repeats", "1", "--workload", "W5",
                     "--json-file", jpath], timeout=600)
        with open(jpath, encoding="utf-8") as fh:
            rows = json.load(fh)["rows"]
        self.assertTrue(all("best_peer" not in r for r in rows))

    def test_bad_peers_files_fail_cleanly(self):
        self.assert_clean_failure(["bench", "--peers", self.path("missing.json")], "--peers",
                                  "missing.json")
        bad = self.save_text("bad.json", "{not json")
        self.assert_clean_failure(["bench", "--peers", bad], "--peers", "bad.json", "JSON")
        no_ms = self.save_text("noms.json", json.dumps(
            {"peers": [{"workload": "W1", "params": {}, "peer": "p", "backend": "cpu",
                        "time_unit": "ms/iter"}]}))
        self.assert_clean_failure(["bench", "--peers", no_ms], "--peers", "peers[0]", "ms")

    def save_text(self, name, text):
        p = self.path(name)
        with open(p, "w", encoding="utf-8") as fh:
            fh.write(text)
        return p


class PeerData(unittest.TestCase):
    """The peers' copy of the bench generator (std::mt19937_64 +
    std::uniform_real_distribution<float>, libstdc++) against values of the C++ one."""

    def test_mt19937_64_standard_check_value(self):
        # [rand.predef]: the 10000th output of a default-constructed mt19937_64.
        g = peer_common.Mt19937_64()
        self.assertEqual(int(g.next_u64(10000)[-1]), 9981545732273789042)

    def test_uniform_float_matches_libstdcxx(self):
        # std::mt19937_64 r(2); std::uniform_real_distribution<float> u(0, 1): draws 0..3
        # and 696..699 (printed with %.9g by a C++ program built with g++ / libstdc++).
        u = peer_common.uniform_float(peer_common.Mt19937_64(2), 700)
        want = np.array([0.903604031, 0.850236118, 0.78382045, 0.925317109, 0.779354453,
                         0.230661944, 0.314826399, 0.864002049], dtype=np.float32)
        np.testing.assert_array_equal(np.concatenate([u[:4], u[696:]]), want)
        y = peer_common.uniform_float(peer_common.Mt19937_64(20240607), 3) + np.float32(0.1)
        np.testing.assert_array_equal(y.astype(np.float32),
                                      np.array([0.681840479, 0.944121838, 0.324056357],
                                               dtype=np.float32))

    def test_float_conversion_rounds_once_to_nearest_even(self):
        rng = np.random.default_rng(0)
        ks = [int(k) for k in rng.integers(0, 2**63, size=3000, dtype=np.int64)]
        ks += [2**64 - 1, 2**63, (2**24 + 1) << 39, (2**24 + 3) << 39, ((2**24 + 1) << 38) + 1,
               1, 0, 2**24 + 1]
        got = peer_common._u64_to_float32_rne(np.array(ks, dtype=np.uint64))
        for k, g in zip(ks, got):
            if k == 0:
                self.assertEqual(g, 0)
                continue
            s = max(k.bit_length() - 24, 0)
            q, r, h = k >> s, k - ((k >> s) << s), (1 << s) >> 1
            if s and (r > h or (r == h and q & 1)):
                q += 1
            self.assertEqual(int(g), q << s, k)

    def test_merge_concatenates_and_checks_entries(self):
        a = {"machine": "m1", "peers": [entry({"n": 1}, "a", 1.0)], "skipped": [{"peer": "x",
                                                                                  "reason": "r"}]}
        b = {"machine": "m2", "peers": [entry({"n": 2}, "b", 2.0)]}
        m = run_peers.merge([a, b])
        self.assertEqual(m["machine"], "m1")
        self.assertEqual([e["peer"] for e in m["peers"]], ["a", "b"])
        self.assertEqual(len(m["skipped"]), 1)
        with self.assertRaises(ValueError):
            run_peers.merge([{"peers": [{"workload": "W1"}]}])

    def test_peer_scripts_are_found(self):
        names = [os.path.basename(p) for p in run_peers.peer_scripts()]
        self.assertIn("sinkhorn_peers.py", names)
        self.assertIn("sliced_peers.py", names)
        self.assertNotIn("peer_common.py", names)
        self.assertNotIn("run_peers.py", names)


if __name__ == "__main__":
    unittest.main()
