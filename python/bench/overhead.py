"""The binding's overhead per call: otgpu.sinkhorn from Python against the same
otgpu::sinkhorn call timed in C++ inside the extension (_time_native_solves: the
clock read around the library call alone, no Python in between). The clock is the
calling thread's CPU time (time.thread_time_ns / CLOCK_THREAD_CPUTIME_ID), so that the
preemptions of a loaded machine do not count; the solve runs on that thread
(cpu_threads = 1).

Problem: B = 1, n = m = N (256 and 8 by default), d = 2, eps = 0.1, CPU backend, one
thread, warm started from the converged potentials with check_every = 1, so each
solve is one iteration and one check. The two are timed alternately, one call each,
so that a loaded machine slows both alike; the overhead is the median of the paired
differences (Python call minus C++ call).
    python3 python/bench/overhead.py [--n 256 8] [--repeats 3000]
"""

import argparse
import json
import time

import numpy as np

import otgpu
from otgpu import _otgpu


def points(n):
    t = np.arange(n, dtype=np.float64)
    x = np.stack([np.sin(t), np.cos(1.3 * t)], axis=1)
    y = np.stack([np.sin(0.7 * t) + 0.5, np.cos(1.1 * t)], axis=1)
    return x, y


def measure(n, repeats):
    x, y = points(n)
    opts = dict(eps=0.1, cpu_threads=1, backend="cpu")
    f, g = otgpu.sinkhorn(x, y, **opts).numpy()
    warm = dict(opts, f_init=f, g_init=g, check_every=1)
    assert otgpu.sinkhorn(x, y, **warm).iterations == 1
    py, cpp = [], []
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        otgpu.sinkhorn(x, y, **warm)
        py.append((time.thread_time_ns() - t0) * 1e-3)
        cpp.append(float(_otgpu._time_native_solves(x, y, 1, **warm)[0]))
    py, cpp = np.array(py), np.array(cpp)
    return {"n": n, "repeats": repeats,
            "python_median_us": round(float(np.median(py)), 2),
            "cpp_median_us": round(float(np.median(cpp)), 2),
            "python_min_us": round(float(py.min()), 2),
            "cpp_min_us": round(float(cpp.min()), 2),
            "overhead_median_us": round(float(np.median(py - cpp)), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[256, 8])
    ap.add_argument("--repeats", type=int, default=3000)
    args = ap.parse_args()
    for n in args.n:
        print(json.dumps(measure(n, args.repeats)))


if __name__ == "__main__":
    main()
