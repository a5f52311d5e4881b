#!/usr/bin/env python3
"""Peer timings for W4e: torchcfm's OTPlanSampler logic (method "sinkhorn") on the CPU.

For each minibatch: the squared Euclidean cost in numpy, the plan by POT's ot.sinkhorn
with reg = eps x mean cost (the relative eps of the otgpu rows; torchcfm divides the
cost by its max instead), then bs pairs drawn from the flattened plan by
np.random.choice with replacement, as torchcfm does. (The exact W4 peers, POT's emd as
torchcfm calls it among them, are bench/peers/w4_assignment.py.) Times are per
call for K minibatches (ms), the median of --repeats runs after one warm-up.

The accuracy is matched: the otgpu rows stop when the L1 marginal error of the plan
(max of ||P 1 - a||_1 and ||P^T 1 - b||_1; one of the two is exact after the last
update) is <= tol, checked every 10 iterations, and carry "tol" in their params. POT's
own rule is different (the L2 error of the column marginal <= stopThr, default 1e-9,
or 1000 iterations), so for each tol in TOLS this script finds, per minibatch, the
fewest iterations (a multiple of 10) after which POT's plan has an L1 marginal error
<= tol, and times ot.sinkhorn(numItermax = that count, stopThr = 0): POT stopped by
the same rule as ours. The plain torchcfm call (POT's defaults) is timed too, with
"tol": "pot-default" (it matches no row) and the L1 error it reached.

Writes JSON (stdout, or --out FILE):
  {"machine": str, "date": str, "peers": [{"workload": "W4e", "params": {...same keys
   and values as the otgpu bench rows, tol included...}, "peer": str, "backend": "cpu",
   "ms": float, "time_unit": "ms/call", "version": str, "marginal_error_l1": float,
   "iterations": [int per minibatch]}]}
Without POT (or numpy) it writes an empty peer list and says why on stderr.

Usage: bench/peers/w4_coupling.py [--full] [--repeats N] [--out FILE]
"""

import argparse
import datetime
import warnings
import json
import platform
import sys
import time

EPS = 0.05
TOLS = (1e-4, 1e-6)  # the GPU rows' tol and the CPU rows' tol


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os
    return f"{platform.node()}: {cpu} x{os.cpu_count()} threads"


def data(np, K, bs, d):
    rng = np.random.default_rng(20200607)
    x0 = rng.standard_normal((K, bs, d), dtype=np.float32)
    x1 = rng.standard_normal((K, bs, d), dtype=np.float32) + 1.0
    return x0.astype(np.float64), x1.astype(np.float64)


def sqcost(np, x, y):
    # |x|^2 + |y|^2 - 2 <x, y>, as torch.cdist(...)**2 computes it for large d.
    c = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(c, 0.0)


def marginal_error_l1(np, P, a, b):
    return float(max(np.abs(P.sum(1) - a).sum(), np.abs(P.sum(0) - b).sum()))


def plan_sampler_call(np, ot, x0, x1, rng, iters=None):
    """One training step's couplings for K minibatches (torchcfm OTPlanSampler, method
    sinkhorn). iters: POT's iteration count per minibatch (stopThr = 0), or None for
    POT's defaults. Returns the largest L1 marginal error of the plans."""
    err = 0.0
    for k in range(x0.shape[0]):
        M = sqcost(np, x0[k], x1[k])
        n, m = M.shape
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
        if iters is None:
            P = ot.sinkhorn(a, b, M, reg=EPS * M.mean())
        else:
            P = ot.sinkhorn(a, b, M, reg=EPS * M.mean(), numItermax=iters[k], stopThr=0.0)
        err = max(err, marginal_error_l1(np, P, a, b))
        p = P.flatten()
        p = p / p.sum()
        choice = rng.choice(n * m, p=p, size=n, replace=True)
        np.divmod(choice, m)
    return err


def iterations_to(np, ot, x, y, tol):
    """The fewest iterations (a multiple of 10, at most 100000) after which POT's plan of
    one minibatch has an L1 marginal error <= tol (doubling, then bisection)."""
    M = sqcost(np, x, y)
    n, m = M.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)

    def ok(it):
        P = ot.sinkhorn(a, b, M, reg=EPS * M.mean(), numItermax=it, stopThr=0.0)
        return marginal_error_l1(np, P, a, b) <= tol

    hi = 10
    while not ok(hi):
        if hi >= 100000:
            return hi
        hi *= 2
    lo = hi // 2 if hi > 10 else 0  # lo fails (or is 0), hi passes
    while hi - lo > 10:
        mid = (lo + hi) // 20 * 10
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def median(values):
    v = sorted(values)
    h = len(v) // 2
    return v[h] if len(v) % 2 else 0.5 * (v[h - 1] + v[h])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also bs=4096 and K=64 x bs=256")
    # run_peers.py's common arguments: --suite full is --full; the peer is CPU-only,
    # so --device and --max-n do not change what runs.
    ap.add_argument("--suite", choices=("quick", "full"), default="quick")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--max-n", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the JSON here instead of stdout")
    args = ap.parse_args()
    args.full = args.full or args.suite == "full"

    report = {"machine": machine(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "peers": []}
    try:
        import numpy as np
        import ot
    except ImportError as e:  # the peer is optional
        print(f"w4_coupling: peer not importable ({e}); no peer rows", file=sys.stderr)
        np = ot = None

    if ot is not None:
        # stopThr = 0 runs numItermax iterations on purpose; POT warns that it did not
        # converge.
        warnings.filterwarnings("ignore", message=".*[Ss]inkhorn did not converge.*")
        sizes = [(1, bs, d) for d in (64, 3072) for bs in (256, 1024)]
        if args.full:
            sizes += [(1, 4096, 64), (1, 4096, 3072), (64, 256, 3072)]
        rng = np.random.default_rng(1)
        version = f"POT {ot.__version__}, numpy {np.__version__}"
        for K, bs, d in sizes:
            x0, x1 = data(np, K, bs, d)
            base = {"K": K, "bs": bs, "d": d, "eps": EPS, "eps_relative": True, "pairs": bs,
                    "replacement": True}
            runs = [("pot-default", None)]
            for tol in TOLS:
                runs.append((tol, [iterations_to(np, ot, x0[k], x1[k], tol) for k in range(K)]))
            for tol, iters in runs:
                err = plan_sampler_call(np, ot, x0, x1, rng, iters)  # warm-up
                times = []
                for _ in range(max(1, args.repeats)):
                    t0 = time.perf_counter()
                    plan_sampler_call(np, ot, x0, x1, rng, iters)
                    times.append((time.perf_counter() - t0) * 1e3)
                if iters is None:
                    peer = "torchcfm-style ot.sinkhorn (POT defaults) + np.random.choice"
                else:
                    peer = "ot.sinkhorn to the same L1 marginal error + np.random.choice"
                entry = {"workload": "W4e", "params": dict(base, tol=tol), "peer": peer,
                         "backend": "cpu", "ms": median(times), "time_unit": "ms/call",
                         "version": version, "marginal_error_l1": err}
                if iters is not None:
                    entry["iterations"] = iters
                report["peers"].append(entry)
                print(f"W4e {entry['params']}: {median(times):.3f} ms/call, L1 marginal error "
                      f"{err:.3g}, iterations {iters}", file=sys.stderr)

    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
