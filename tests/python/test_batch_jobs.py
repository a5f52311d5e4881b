"""End-to-end tests of `otgpu batch`: jobs from JSONL, one result line per job.

The reference for a job's result is the single command run with the same flags and
--json (the batch must reproduce it exactly, the wall time aside); bookkeeping
(resume, rank split, line integrity) is checked against the job list itself.
"""

import json
import os
import shutil
import subprocess
import time
import unittest

import numpy as np

from otgpu_testutil import CliTestCase, otgpu_bin, run_otgpu

ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
             "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE")


def clean_env(**extra):
    """The environment without any MPI rank variables (ctest may run under a launcher)."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env.update(extra)
    return env


def without_time(result):
    """A command's --json object without its wall time (the one field that may differ)."""
    r = dict(result)
    r.pop("time_ms", None)
    return r


class BatchTest(CliTestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(7)
        self.x = self.save("X.npy", rng.random((40, 2)))
        self.y = self.save("Y.npy", rng.random((50, 2)) + 0.2)
        self.m1 = self.save("m1.npy", np.array([0.0, 1.0]))
        self.s1 = self.save("s1.npy", np.array([[2.0, 0.3], [0.3, 1.0]]))
        self.m2 = self.save("m2.npy", np.array([1.0, -1.0]))
        self.s2 = self.save("s2.npy", np.array([[1.0, -0.2], [-0.2, 0.5]]))
        self.jobs_path = self.path("jobs.jsonl")
        self.out = self.path("results.jsonl")

    # ---- helpers ------------------------------------------------------------------

    def write_jobs(self, jobs, name="jobs.jsonl"):
        """`jobs`: dicts (written as JSON) or raw strings (written as they are)."""
        path = self.path(name)
        with open(path, "w") as fh:
            for j in jobs:
                fh.write((j if isinstance(j, str) else json.dumps(j)) + "\n")
        return path

    def batch(self, *extra, jobs=None, out=None, env=None):
        """Runs `otgpu batch`, on the CPU unless `extra` names --devices (the CPU results
        are the fp64 references; test_gpu_workers covers the GPU)."""
        extra = [str(e) for e in extra]
        if "--devices" not in extra:
            extra += ["--devices", "cpu"]
        args = [otgpu_bin(), "batch", "--jobs", jobs or self.jobs_path, "--out", out or self.out,
                *extra]
        return subprocess.run(args, capture_output=True, text=True, timeout=120,
                              env=env or clean_env(), cwd=self.tmp, check=False)

    def read_results(self, path=None):
        """Every line of RESULTS parsed; a line that is not one JSON object fails."""
        with open(path or self.out) as fh:
            text = fh.read()
        self.assertTrue(text.endswith("\n"), "RESULTS must end with a newline")
        lines = []
        for k, line in enumerate(text.splitlines()):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                self.fail(f"RESULTS line {k + 1} is not JSON ({e}): {line[:200]!r}")
            self.assertIsInstance(obj, dict)
            lines.append(obj)
        return lines

    def by_id(self, lines):
        out = {}
        for r in lines:
            self.assertNotIn(r["id"], out, f"id {r['id']} has two result lines")
            out[r["id"]] = r
        return out

    def sinkhorn_job(self, jid, eps=0.05, **more):
        return {"id": jid, "command": "sinkhorn", "x": "X.npy", "y": "Y.npy", "eps": eps, **more}

    # ---- tests --------------------------------------------------------------------

    def test_mixed_good_and_bad_jobs(self):
        self.write_jobs([
            self.sinkhorn_job("ok-sinkhorn", divergence=True, a=None, eps_relative=False),
            {"id": "ok-sliced", "command": "sliced", "x": "X.npy", "y": "Y.npy",
             "projections": 8},
            {"id": "ok-gaussian", "command": "gaussian", "m1": "m1.npy", "s1": "s1.npy",
             "m2": "m2.npy", "s2": "s2.npy"},
            self.sinkhorn_job("bad-file", x="missing.npy"),
            self.sinkhorn_job("bad-flag", frobnicate=3),
            self.sinkhorn_job("bad-number", eps="abc"),
            "{this is not json",
            {"id": "bad-command", "command": "frobnicate", "x": "X.npy"},
            {"command": "sinkhorn", "x": "X.npy"},
            "",
            self.sinkhorn_job("not-converged", eps=0.001, max_iter=3, strict=True),
            self.sinkhorn_job("warned", eps=0.001, max_iter=3),
            self.sinkhorn_job("bad-switch", divergence="yes"),
        ])
        proc = self.batch()
        self.assertEqual(proc.returncode, 1, proc.stderr)
        err = proc.stderr.splitlines()
        self.assertEqual(len(err), 1, proc.stderr)
        self.assertTrue(err[0].startswith("otgpu: error: 8 of 12 job(s) failed"), err[0])
        self.assertEqual(proc.stdout, "")

        lines = self.read_results()
        self.assertEqual(len(lines), 12)  # the blank line is not a job
        for r in lines:
            self.assertEqual(set(r), {"id", "line", "status", "error", "warning", "result",
                                      "device", "time_ms"})
            self.assertEqual(r["device"], "cpu")
            self.assertGreaterEqual(r["time_ms"], 0)
        anonymous = sorted((r for r in lines if r["id"] is None), key=lambda r: r["line"])
        named = self.by_id([r for r in lines if r["id"] is not None])

        for jid in ("ok-sinkhorn", "ok-sliced", "ok-gaussian", "warned"):
            self.assertEqual(named[jid]["status"], "ok", named[jid])
            self.assertIsNone(named[jid]["error"])
            self.assertEqual(named[jid]["result"]["command"], jid.split("-")[1]
                             if jid != "warned" else "sinkhorn")
        self.assertIn("sinkhorn_divergence", named["ok-sinkhorn"]["result"]["problems"][0])
        self.assertIn("did not converge", named["warned"]["warning"])

        def error_of(jid, *mentions):
            r = named[jid]
            self.assertEqual(r["status"], "error", r)
            self.assertNotIn("\n", r["error"])
            for m in mentions:
                self.assertIn(m, r["error"], jid)
            return r
        error_of("bad-file", "--x", "missing.npy")
        error_of("bad-flag", "--frobnicate")
        error_of("bad-number", "--eps", "abc")
        error_of("bad-command", "unknown command 'frobnicate'", "sinkhorn, sliced, gaussian")
        error_of("bad-switch", "--divergence", "true or false")
        # --strict: the job fails, and its result (the report) is still there.
        strict = error_of("not-converged", "did not converge")
        self.assertFalse(strict["result"]["problems"][0]["converged"])

        self.assertEqual([r["line"] for r in anonymous], [7, 9])
        self.assertIn("line 7: not valid JSON", anonymous[0]["error"])
        self.assertIn("line 9: the job has no \"id\"", anonymous[1]["error"])
        self.assertEqual(named["not-converged"]["line"], 11)

    def test_results_equal_the_single_commands(self):
        sinkhorn_flags = {"x": "X.npy", "y": "Y.npy", "eps": 0.05, "divergence": True,
                          "tol": 1e-8}
        sliced_flags = {"x": "X.npy", "y": "Y.npy", "projections": 16, "p": 1.5, "seed": 3}
        gaussian_flags = {"m1": "m1.npy", "s1": "s1.npy", "m2": "m2.npy", "s2": "s2.npy",
                          "eps": 0.2}
        self.write_jobs([
            {"id": "s", "command": "sinkhorn", **sinkhorn_flags, "f_out": "f_batch.npy",
             "sample_out": "pairs_batch.npy"},
            {"id": "l", "command": "sliced", **sliced_flags},
            {"id": "g", "command": "gaussian", **gaussian_flags},
        ])
        proc = self.batch("--devices", "cpu")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        got = self.by_id(self.read_results())

        def single(command, flags, *extra):
            args = [command]
            for k, v in flags.items():
                args += [f"--{k}"] if v is True else [f"--{k}", str(v)]
            # The batch's CPU worker runs each job with --backend cpu.
            proc = run_otgpu([*args, *extra, "--backend", "cpu", "--json"])
            self.assertEqual(proc.returncode, 0, proc.stderr)
            return json.loads(proc.stdout)

        old = os.getcwd()
        os.chdir(self.tmp)
        try:
            ref_s = single("sinkhorn", sinkhorn_flags, "--f-out", "f_single.npy",
                           "--sample-out", "pairs_single.npy")
            ref_l = single("sliced", sliced_flags)
            ref_g = single("gaussian", gaussian_flags)
        finally:
            os.chdir(old)
        self.assertEqual(without_time(got["s"]["result"]), without_time(ref_s))
        self.assertEqual(without_time(got["l"]["result"]), without_time(ref_l))
        self.assertEqual(without_time(got["g"]["result"]), without_time(ref_g))
        # The outputs the job asked for are the single command's, value for value.
        np.testing.assert_array_equal(np.load(self.path("f_batch.npy")),
                                      np.load(self.path("f_single.npy")))
        np.testing.assert_array_equal(np.load(self.path("pairs_batch.npy")),
                                      np.load(self.path("pairs_single.npy")))

    def test_resume_runs_only_the_missing_ids(self):
        jobs = [self.sinkhorn_job(f"j{k}", eps=0.05 + 0.01 * k) for k in range(6)]
        self.write_jobs(jobs)
        # A previous run: j0 and j1 ok, j2 failed, j3 cut short by a kill.
        seeded = [
            {"id": "j0", "status": "ok", "result": {"marker": "kept"}},
            {"id": "j1", "status": "ok", "result": {"marker": "kept"}},
            {"id": "j2", "status": "error", "error": "earlier failure"},
        ]
        with open(self.out, "w") as fh:
            for s in seeded:
                fh.write(json.dumps(s) + "\n")
            fh.write('{"id": "j3", "status": "o')

        refused = self.batch()
        self.assertEqual(refused.returncode, 1)
        self.assertIn("already exists", refused.stderr)
        self.assertIn("--resume", refused.stderr)

        proc = self.batch("--resume")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        with open(self.out) as fh:
            raw = fh.read().splitlines()
        # The earlier lines stay as they were; the cut one was ended, not joined.
        self.assertEqual([json.loads(line) for line in raw[:3]], seeded)
        self.assertEqual(raw[3], '{"id": "j3", "status": "o')
        new = [json.loads(line) for line in raw[4:]]
        self.assertEqual(sorted(r["id"] for r in new), ["j2", "j3", "j4", "j5"])
        self.assertTrue(all(r["status"] == "ok" for r in new))

        # Everything ok now: a second resume runs nothing and appends nothing.
        again = self.batch("--resume")
        self.assertEqual(again.returncode, 0, again.stderr)
        with open(self.out) as fh:
            self.assertEqual(fh.read().splitlines(), raw)

        # --force starts over.
        forced = self.batch("--force")
        self.assertEqual(forced.returncode, 0, forced.stderr)
        self.assertEqual(sorted(r["id"] for r in self.read_results()),
                         [f"j{k}" for k in range(6)])

    def test_resume_after_a_killed_run(self):
        # Jobs slow enough to kill the batch in the middle: every job it wrote stays
        # whole, and --resume runs exactly the ones without an ok line.
        rng = np.random.default_rng(1)
        self.save("XL.npy", rng.random((150, 3)))
        self.save("YL.npy", rng.random((150, 3)))
        jobs = [{"id": f"k{k}", "command": "sinkhorn", "x": "XL.npy", "y": "YL.npy",
                 "eps": 0.01, "tol": 1e-9, "threads": 1} for k in range(15)]
        self.write_jobs(jobs)
        p = subprocess.Popen([otgpu_bin(), "batch", "--jobs", self.jobs_path, "--out", self.out,
                              "--devices", "cpu"],
                             cwd=self.tmp, env=clean_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            if os.path.exists(self.out):
                with open(self.out) as fh:
                    if len(fh.read().splitlines()) >= 2:
                        break
            time.sleep(0.01)
        p.kill()
        p.wait()
        first = self.read_results()
        done = {r["id"] for r in first}
        self.assertGreaterEqual(len(done), 2)
        if len(done) == len(jobs):
            self.skipTest("the machine finished every job before the kill")
        proc = self.batch("--resume")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = self.read_results()
        second = [r["id"] for r in lines[len(first):]]
        self.assertEqual(sorted(second), sorted(j["id"] for j in jobs if j["id"] not in done))

    def test_several_cpu_workers_give_the_same_results(self):
        jobs = []
        for k in range(8):
            jobs.append(self.sinkhorn_job(f"s{k}", eps=0.03 + 0.01 * k, divergence=k % 2 == 0))
            jobs.append({"id": f"l{k}", "command": "sliced", "x": "X.npy", "y": "Y.npy",
                         "projections": 4 + k, "seed": k})
        self.write_jobs(jobs)
        one = self.batch("--workers", 1, out=self.path("one.jsonl"))
        two = self.batch("--workers", 3, out=self.path("three.jsonl"))
        self.assertEqual(one.returncode, 0, one.stderr)
        self.assertEqual(two.returncode, 0, two.stderr)
        r1 = self.by_id(self.read_results(self.path("one.jsonl")))
        r3 = self.by_id(self.read_results(self.path("three.jsonl")))
        self.assertEqual(set(r1), {j["id"] for j in jobs})
        self.assertEqual(set(r1), set(r3))
        for jid in r1:
            self.assertEqual(without_time(r1[jid]["result"]), without_time(r3[jid]["result"]),
                             jid)

    def test_ranks_from_the_environment_split_the_jobs(self):
        # Two processes as mpirun would start them, appending to one RESULTS at once.
        jobs = []
        for k in range(60):
            if k % 3 == 0:
                jobs.append({"id": f"g{k}", "command": "gaussian", "m1": "m1.npy",
                             "s1": "s1.npy", "m2": "m2.npy", "s2": "s2.npy", "eps": 0.1 * k})
            else:
                jobs.append({"id": f"l{k}", "command": "sliced", "x": "X.npy", "y": "Y.npy",
                             "projections": 2, "seed": k})
        jobs.append(self.sinkhorn_job("broken", x="missing.npy"))
        self.write_jobs(jobs)
        procs = []
        for rank in range(2):
            env = clean_env(OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE="2")
            procs.append(subprocess.Popen(
                [otgpu_bin(), "batch", "--jobs", self.jobs_path, "--out", self.out,
                 "--workers", "2", "--devices", "cpu"], cwd=self.tmp, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs):
            # A failed job does not fail a rank (mpirun would abort the others).
            self.assertEqual(p.returncode, 0, err)
        lines = self.read_results()
        got = self.by_id(lines)
        self.assertEqual(set(got), {j["id"] for j in jobs})
        for k, j in enumerate(jobs):
            r = got[j["id"]]
            self.assertEqual(r["rank"], k % 2, r)
            self.assertEqual(r["line"], k + 1)
        self.assertEqual(got["broken"]["status"], "error")
        self.assertEqual(sum(r["status"] == "ok" for r in lines), len(jobs) - 1)
        broken_rank = (len(jobs) - 1) % 2
        self.assertIn("1 of 31 job(s) of rank", outs[broken_rank][1])

        # A rank started again finds its own jobs' lines: refused without --resume;
        # with it, only its failed job runs again.
        env = clean_env(OMPI_COMM_WORLD_RANK=str(broken_rank), OMPI_COMM_WORLD_SIZE="2")
        again = self.batch(env=env)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already exists and holds a result of job", again.stderr)
        resumed = self.batch("--resume", env=env)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertEqual([r["id"] for r in self.read_results()[len(lines):]], ["broken"])

    @unittest.skipIf(shutil.which("mpirun") is None, "mpirun is not installed")
    def test_mpirun_two_ranks(self):
        env = clean_env(**ROOT_ENV)
        probe = subprocess.run(["mpirun", "-np", "1", "--oversubscribe", "true"], env=env,
                               capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode != 0:
            self.skipTest(f"mpirun cannot start processes here: {probe.stderr.strip()[:200]}")
        jobs = [self.sinkhorn_job(f"m{k}", eps=0.05 + 0.005 * k) for k in range(10)]
        self.write_jobs(jobs)
        proc = subprocess.run(
            ["mpirun", "-np", "2", "--oversubscribe", otgpu_bin(), "batch", "--jobs",
             self.jobs_path, "--out", self.out, "--devices", "cpu"],
            env=env, cwd=self.tmp, capture_output=True, text=True, timeout=120, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        got = self.by_id(self.read_results())
        self.assertEqual(set(got), {j["id"] for j in jobs})
        self.assertEqual({r["rank"] for r in got.values()}, {0, 1})
        for k, j in enumerate(jobs):
            self.assertEqual(got[j["id"]]["rank"], k % 2)
            self.assertEqual(got[j["id"]]["status"], "ok")

    def test_gpu_workers(self):
        # Where a GPU is usable: --devices all puts the jobs on it, with the results of
        # the single command on that device (fp32: compared to a relative 1e-5).
        probe = run_otgpu(["sinkhorn", "--x", self.x, "--y", self.y, "--eps", "0.1",
                           "--backend", "cuda", "--json"])
        if probe.returncode != 0:
            self.skipTest("no usable GPU: " + probe.stderr.strip()[:200])
        flags = {"s": ("sinkhorn", {"x": "X.npy", "y": "Y.npy", "eps": 0.05}),
                 "l": ("sliced", {"x": "X.npy", "y": "Y.npy", "projections": 16}),
                 "g": ("gaussian", {"m1": "m1.npy", "s1": "s1.npy", "m2": "m2.npy",
                                    "s2": "s2.npy", "eps": 0.2})}
        self.write_jobs([{"id": k, "command": c, **f} for k, (c, f) in flags.items()])
        proc = self.batch("--devices", "all")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        got = self.by_id(self.read_results())
        for jid, (command, f) in flags.items():
            r = got[jid]
            self.assertRegex(r["device"], r"^cuda:[0-9]+$")
            args = [command]
            for k, v in f.items():
                args += [f"--{k}", str(v)]
            device = r["device"].split(":")[1]
            single = subprocess.run([otgpu_bin(), *args, "--backend", "cuda", "--device", device,
                                     "--json"], cwd=self.tmp, capture_output=True, text=True,
                                    timeout=120, check=False)
            self.assertEqual(single.returncode, 0, single.stderr)
            self.assert_close(without_time(r["result"]), without_time(json.loads(single.stdout)),
                              jid)

    def assert_close(self, a, b, where):
        if isinstance(a, dict):
            self.assertEqual(set(a), set(b), where)
            for k in a:
                self.assert_close(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            self.assertEqual(len(a), len(b), where)
            for k, (u, v) in enumerate(zip(a, b)):
                self.assert_close(u, v, f"{where}[{k}]")
        elif isinstance(a, float) and isinstance(b, float):
            self.assertLessEqual(abs(a - b), 1e-5 * max(abs(a), abs(b), 1e-12), where)
        else:
            self.assertEqual(a, b, where)

    def test_refusals_before_any_job_runs(self):
        self.write_jobs([self.sinkhorn_job("a"), self.sinkhorn_job("b"),
                         self.sinkhorn_job("a", eps=0.1)])
        line = self.assert_batch_fails([], "id \"a\"", "lines 1 and 3")
        self.assertFalse(os.path.exists(self.out), line)
        self.write_jobs([self.sinkhorn_job("a")])
        self.assert_batch_fails(["--devices", "0,x"], "--devices", "0,x")
        self.assert_batch_fails(["--devices", "99"], "--devices", "device 99")
        self.assert_batch_fails(["--workers", "0"], "--workers")
        self.assert_batch_fails(["--resume", "--force"], "--resume", "--force")
        self.assert_batch_fails([], "--out", jobs=self.jobs_path, out=self.jobs_path)
        self.assert_batch_fails([], "--jobs", "nothere.jsonl", jobs=self.path("nothere.jsonl"))
        env = clean_env(OMPI_COMM_WORLD_RANK="2", OMPI_COMM_WORLD_SIZE="2")
        self.assert_batch_fails([], "OMPI_COMM_WORLD_RANK", env=env)
        env = clean_env(OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2")
        self.assert_batch_fails(["--force"], "--force", "mpirun", env=env)
        self.assertFalse(os.path.exists(self.out))

    def assert_batch_fails(self, extra, *mentions, jobs=None, out=None, env=None):
        proc = self.batch(*extra, jobs=jobs, out=out, env=env)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = proc.stderr.splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("otgpu: error: "), lines[0])
        for m in mentions:
            self.assertIn(m, lines[0])
        return lines[0]

    def test_progress_line_only_when_asked(self):
        self.write_jobs([self.sinkhorn_job("a"), self.sinkhorn_job("b", eps=0.1)])
        # --devices all: the GPUs, or the CPU without one.
        quiet = self.batch("--devices", "all")
        self.assertEqual(quiet.returncode, 0, quiet.stderr)
        self.assertEqual(quiet.stderr, "")  # stderr is a pipe, not a terminal
        loud = self.batch("--progress", "--force", "--devices", "all")
        self.assertEqual(loud.returncode, 0, loud.stderr)
        last = loud.stderr.rstrip("\n").split("\r")[-1]
        self.assertIn("2/2 done, 0 failed", last)
        self.assertIn("jobs/s", last)


if __name__ == "__main__":
    unittest.main()
