#!/usr/bin/env python3
"""Peer timings for bench workload W4 (exact assignment of flow-matching minibatches),
for `otgpu bench --peers FILE`.

Times, on the same points as bench/assignment_workloads.cpp (splitmix64 counters with
the same seeds: x0 ~ N(0, I) by Box-Muller, x1 = U[0, 1) + 0.1, fp32) and with the cost matrix included:
  scipy.linear_sum_assignment  scipy.optimize.linear_sum_assignment on the fp64 cost
  pot.emd                      POT's ot.emd(a, b, M) as torchcfm's OTPlanSampler calls it
                               (uniform a, b; M the squared-Euclidean cost in numpy)
  torch-linear-assignment      batch_linear_assignment on the GPU (when importable and
                               torch sees a GPU)
A batch of K problems is timed as K solves in a loop (the peers take one problem per
call, except torch-linear-assignment, which takes the batch); their params carry
"part": "assignment". The cost matrix alone (params "part": "cost", bs = 256 at
d = 64, 512, 3072, the otgpu cpu-cost rows) is timed as numpy's product form
|x|^2 + |y|^2 - 2 x y^T clamped at 0 on fp64 points (numpy's BLAS for the product). Writes JSON:
  {"machine", "date", "peers": [{"workload": "W4", "params": {"bs", "d", "K", "part"},
   "peer", "backend", "ms", "time_unit": "ms/call", "version"}]}

Usage: python3 bench/peers/w4_assignment.py [--suite quick|full] [--repeats N] [--out FILE]
"""

import argparse
import datetime
import json
import platform
import sys
import time

import numpy as np

SEED_X0, SEED_X1 = 4001, 4002
COST_BS, COST_DIMS = 256, (64, 512, 3072)  # the cost-only rows (part = cost)
QUICK = [(1, 256, 64), (1, 1024, 64), (1, 256, 3072), (64, 256, 64)]
FULL = [(1, 256, 64), (1, 1024, 64), (1, 4096, 64), (1, 256, 3072), (1, 1024, 3072),
        (1, 4096, 3072), (64, 256, 64), (64, 256, 3072), (1, 2048, 64)]


def unit(seed, k):
    """splitmix64 of (seed << 32) + k as a 53-bit fraction in [0, 1) (k: uint64 array)."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) << np.uint64(32)) + k + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def make_points(count):
    """The benchmark's points: x0 ~ N(0, 1) by Box-Muller on the counters 2k, 2k + 1,
    x1 = U[0, 1) + 0.1; fp32, as bench/assignment_workloads.cpp draws them."""
    k = np.arange(count, dtype=np.uint64)
    r = np.sqrt(-2.0 * np.log(1.0 - unit(SEED_X0, np.uint64(2) * k)))
    x0 = (r * np.cos(6.283185307179586 * unit(SEED_X0, np.uint64(2) * k + np.uint64(1))))
    x1 = unit(SEED_X1, k) + 0.1
    return x0.astype(np.float32), x1.astype(np.float32)


def sq_cost(x, y):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    c = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(c, 0.0)


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=("quick", "full"), default="quick")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="-", help="JSON file (default: stdout)")
    # run_peers.py's common arguments: --device cpu skips the GPU peer
    # (torch-linear-assignment); --max-n is not used (the W4 sizes are fixed).
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--max-n", type=int, default=None)
    args = ap.parse_args()
    cases = QUICK if args.suite == "quick" else FULL
    peers = []

    def add(K, bs, d, peer, backend, ms, version):
        params = {"bs": bs, "d": d, "K": K, "part": "assignment"}
        peers.append({"workload": "W4", "params": params, "peer": peer, "backend": backend,
                      "ms": ms, "time_unit": "ms/call", "version": version})

    try:
        import scipy
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        linear_sum_assignment = None
    try:
        import ot
    except ImportError:
        ot = None
    try:
        import torch
        from torch_linear_assignment import batch_linear_assignment
        tla_version = "unknown"
        try:
            from importlib.metadata import version
            tla_version = version("torch-linear-assignment")
        except Exception:  # noqa: BLE001 - the version is informative only
            pass
        if args.device == "cpu" or not torch.cuda.is_available():
            batch_linear_assignment = None
    except ImportError:
        batch_linear_assignment = None

    for d in COST_DIMS:
        x0, x1 = make_points(COST_BS * d)
        x = x0.reshape(COST_BS, d).astype(np.float64)
        y = x1.reshape(COST_BS, d).astype(np.float64)
        peers.append({"workload": "W4",
                      "params": {"bs": COST_BS, "d": d, "K": 1, "part": "cost"},
                      "peer": "numpy |x|^2 + |y|^2 - 2 x @ y.T", "backend": "cpu",
                      "ms": median_ms(lambda: sq_cost(x, y), max(args.repeats, 5)),
                      "time_unit": "ms/call", "version": f"numpy {np.__version__}"})
        print(f"w4 peers: cost bs={COST_BS} d={d} done", file=sys.stderr)

    for K, bs, d in cases:
        x0, x1 = make_points(K * bs * d)
        x0, x1 = x0.reshape(K, bs, d), x1.reshape(K, bs, d)
        if linear_sum_assignment is not None:
            def run_scipy():
                for k in range(K):
                    linear_sum_assignment(sq_cost(x0[k], x1[k]))
            add(K, bs, d, "scipy.linear_sum_assignment", "cpu", median_ms(run_scipy, args.repeats),
                scipy.__version__)
        if ot is not None:
            def run_pot():
                for k in range(K):
                    a, b = ot.unif(bs), ot.unif(bs)
                    ot.emd(a, b, sq_cost(x0[k], x1[k]))
            add(K, bs, d, "pot.emd", "cpu", median_ms(run_pot, args.repeats), ot.__version__)
        if batch_linear_assignment is not None:
            dx0 = torch.from_numpy(x0).cuda()
            dx1 = torch.from_numpy(x1).cuda()

            def run_tla():
                c = torch.cdist(dx0, dx1) ** 2
                batch_linear_assignment(c)
                torch.cuda.synchronize()
            add(K, bs, d, "torch-linear-assignment", "cuda", median_ms(run_tla, args.repeats),
                tla_version)
        print(f"w4 peers: K={K} bs={bs} d={d} done", file=sys.stderr)

    doc = {"machine": f"{cpu_name()} x{__import__('os').cpu_count()} threads",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "peers": peers}
    text = json.dumps(doc, indent=1)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
