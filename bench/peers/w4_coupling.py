#!/usr/bin/env python3
"""Peer timings for W4e: torchcfm's OTPlanSampler logic (method "sinkhorn") on the CPU.

For each minibatch: the squared Euclidean cost in numpy, the plan by POT's ot.sinkhorn
with reg = eps x mean cost (the relative eps of the otgpu rows; torchcfm divides the
cost by its max instead), then bs pairs drawn from the flattened plan by
np.random.choice with replacement, as torchcfm does. (The exact W4 peers, POT's emd as
torchcfm calls it among them, are bench/peers/w4_assignment.py.) Times are per
call for K minibatches (ms), the median of --repeats runs after one warm-up.

Writes JSON (stdout, or --out FILE):
  {"machine": str, "date": str, "peers": [{"workload": "W4e", "params": {...same keys
   and values as the otgpu bench rows...}, "peer": str, "backend": "cpu", "ms": float,
   "time_unit": "ms/call", "version": str}]}
Without POT (or numpy) it writes an empty peer list and says why on stderr.

Usage: bench/peers/w4_coupling.py [--full] [--repeats N] [--out FILE]
"""

import argparse
import datetime
import json
import platform
import sys
import time

EPS = 0.05


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


def plan_sampler_call(np, ot, x0, x1, exact, rng):
    """One training step's couplings for K minibatches (torchcfm OTPlanSampler)."""
    pairs = []
    for k in range(x0.shape[0]):
        M = sqcost(np, x0[k], x1[k])
        n, m = M.shape
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
        if exact:
            P = ot.emd(a, b, M)
        else:
            P = ot.sinkhorn(a, b, M, reg=EPS * M.mean())
        p = P.flatten()
        p = p / p.sum()
        choice = rng.choice(n * m, p=p, size=n, replace=True)
        pairs.append(np.divmod(choice, m))
    return pairs


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
        sizes = [(1, bs, d) for d in (64, 3072) for bs in (256, 1024)]
        if args.full:
            sizes += [(1, 4096, 64), (1, 4096, 3072), (64, 256, 3072)]
        rng = np.random.default_rng(1)
        for K, bs, d in sizes:
            x0, x1 = data(np, K, bs, d)
            for exact in (False,):
                times = []
                plan_sampler_call(np, ot, x0, x1, exact, rng)  # warm-up
                for _ in range(max(1, args.repeats)):
                    t0 = time.perf_counter()
                    plan_sampler_call(np, ot, x0, x1, exact, rng)
                    times.append((time.perf_counter() - t0) * 1e3)
                if exact:
                    params = {"K": K, "bs": bs, "d": d}
                    workload, peer = "W4", "torchcfm-style ot.emd + np.random.choice"
                else:
                    params = {"K": K, "bs": bs, "d": d, "eps": EPS, "eps_relative": True,
                              "pairs": bs, "replacement": True}
                    workload, peer = "W4e", "torchcfm-style ot.sinkhorn + np.random.choice"
                report["peers"].append({"workload": workload, "params": params, "peer": peer,
                                        "backend": "cpu", "ms": median(times),
                                        "time_unit": "ms/call",
                                        "version": f"POT {ot.__version__}, numpy {np.__version__}"})
                print(f"{workload} {params}: {median(times):.3f} ms/call", file=sys.stderr)

    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
