"""Shared pieces of the peer benchmarks (bench/peers/): the data of `otgpu bench`,
bit for bit, the JSON format, timing and the skip rule.

Data (docs/benchmarks.md, "Data of the rows"): every workload draws its points from
one std::mt19937_64 seeded per workload (W1 CPU rows 1, W1 GPU rows 2, W1d 3, W2 4,
W3 20240607), x first then y, row-major [B, n, d]; each value is
std::uniform_real_distribution<float>(0, 1) as libstdc++ computes it,
    u = float32(k) / 2^64 (k the 64-bit output; the float conversion rounds to
        nearest even; a result of 1 becomes the largest float below 1),
and y adds 0.1f in float32. mt19937_64 is implemented here in NumPy (the C++
standard's check value: the 10000th output for the default seed 5489 is
9981545732273789042).

Output JSON: {"machine", "date", "peers": [{"workload", "params", "peer", "backend",
"ms", "time_unit", "version"}]}; `otgpu bench --peers FILE` matches an entry to a row
when the workload is equal and every key of the entry's params equals the row's.
"""

import datetime
import json
import platform
import socket
import statistics
import sys
import time

import numpy as np

# ---- std::mt19937_64 ----------------------------------------------------------------

_N, _M = 312, 156
_MATRIX_A = np.uint64(0xB5026F5AA96619E9)
_UPPER = np.uint64(0xFFFFFFFF80000000)
_LOWER = np.uint64(0x7FFFFFFF)


class Mt19937_64:
    """std::mt19937_64, 312 outputs per twist, vectorized."""

    def __init__(self, seed=5489):
        mt = [0] * _N
        mt[0] = seed & 0xFFFFFFFFFFFFFFFF
        for i in range(1, _N):
            prev = mt[i - 1]
            mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & 0xFFFFFFFFFFFFFFFF
        self.mt = np.array(mt, dtype=np.uint64)
        self.buf = np.empty(0, dtype=np.uint64)

    def _twist(self):
        mt = self.mt
        one = np.uint64(1)
        zero = np.uint64(0)

        def step(lo, hi, nxt, far):
            x = (mt[lo:hi] & _UPPER) | (nxt & _LOWER)
            mag = np.where((x & one) != zero, _MATRIX_A, zero)
            mt[lo:hi] = far ^ (x >> one) ^ mag

        # i < N - M reads old words only; then words updated by the first part.
        step(0, _N - _M, mt[1:_N - _M + 1].copy(), mt[_M:_N].copy())
        step(_N - _M, _N - 1, mt[_N - _M + 1:_N].copy(), mt[0:_M - 1].copy())
        step(_N - 1, _N, mt[0:1].copy(), mt[_M - 1:_M].copy())
        y = mt.copy()
        y ^= (y >> np.uint64(29)) & np.uint64(0x5555555555555555)
        y ^= (y << np.uint64(17)) & np.uint64(0x71D67FFFEDA60000)
        y ^= (y << np.uint64(37)) & np.uint64(0xFFF7EEE000000000)
        y ^= y >> np.uint64(43)
        return y

    def next_u64(self, count):
        out = []
        have = 0
        while have < count:
            if self.buf.size == 0:
                self.buf = self._twist()
            take = min(count - have, self.buf.size)
            out.append(self.buf[:take])
            self.buf = self.buf[take:]
            have += take
        return np.concatenate(out) if out else np.empty(0, dtype=np.uint64)


def _u64_to_float32_rne(k):
    """float32(k) for uint64 k, rounded to nearest even in one step (a cast through
    float64 would round twice)."""
    k = np.asarray(k, dtype=np.uint64)
    hi = k >> np.uint64(32)
    # bit length of k (1-based), 0 for k = 0
    nbits = np.where(hi != 0, np.floor(np.log2(np.maximum(hi, 1).astype(np.float64))) + 33,
                     np.floor(np.log2(np.maximum(k, 1).astype(np.float64))) + 1)
    nbits = nbits.astype(np.int64)
    # log2 of a float64 near a power of two can be off by one: fix exactly.
    too_big = (nbits < 64) & ((k >> np.minimum(nbits, 63).astype(np.uint64)) != 0)
    nbits = nbits + too_big
    too_small = (nbits > 0) & ((k >> (np.maximum(nbits, 1) - 1).astype(np.uint64)) == 0)
    nbits = nbits - too_small
    shift = np.maximum(nbits - 24, 0).astype(np.uint64)
    q = k >> shift
    rem = k - (q << shift)
    half = np.where(shift > 0, np.uint64(1) << np.maximum(shift, 1) - np.uint64(1), np.uint64(0))
    up = (shift > 0) & ((rem > half) | ((rem == half) & ((q & np.uint64(1)) == 1)))
    q = q + up.astype(np.uint64)
    return np.ldexp(q.astype(np.float64), shift.astype(np.int64)).astype(np.float32)


def uniform_float(gen, count):
    """count draws of std::uniform_real_distribution<float>(0, 1) (libstdc++)."""
    k = gen.next_u64(count)
    u = (_u64_to_float32_rne(k).astype(np.float64) / 2.0 ** 64).astype(np.float32)
    return np.where(u >= np.float32(1), np.nextafter(np.float32(1), np.float32(0)), u)


def make_points(B, n, m, d, seed):
    """x [B, n, d], y [B, m, d] float32: the bench's make_points (W1, W1d, W2)."""
    g = Mt19937_64(seed)
    x = uniform_float(g, B * n * d).reshape(B, n, d)
    y = (uniform_float(g, B * m * d) + np.float32(0.1)).astype(np.float32).reshape(B, m, d)
    return x, y


# Seeds of bench/sinkhorn_workloads.cpp and bench/sliced_workloads.cpp.
SEED_W1_CPU, SEED_W1_GPU, SEED_W1D, SEED_W2, SEED_W3 = 1, 2, 3, 4, 20240607


def sliced_data(n, d):
    """x, y [n, d] float32: the bench's W3 make_data (same rule, seed 20240607)."""
    x, y = make_points(1, n, n, d, SEED_W3)
    return x[0], y[0]


# ---- the workloads' parameters (as in our rows) ------------------------------------------


def w1_cases(suite):
    sizes = [4096, 16384, 65536] + ([262144] if suite == "full" else [])
    return [{"n": n, "m": n, "d": d, "eps": 0.01} for d in (2, 64) for n in sizes]


W1D_CASES = [{"n": n, "m": n, "d": 2, "eps": 0.01} for n in (4096, 16384)]
W2_CASES = [{"B": 64, "n": 512, "m": 512, "d": 32, "eps": 0.05},
            {"B": 1024, "n": 128, "m": 128, "d": 2, "eps": 0.05}]


def w3_cases(suite):
    cases = [{"n": 65536, "m": 65536, "d": 64, "L": 256, "p": 2},
             {"n": 65536, "m": 65536, "d": 3072, "L": 256, "p": 2}]
    if suite == "full":
        cases.append({"n": 1 << 20, "m": 1 << 20, "d": 64, "L": 256, "p": 2})
    return cases


# ---- timing and output ---------------------------------------------------------------------


def median_ms(fn, repeats=5, sync=None):
    """Median wall time of fn() in ms over `repeats` runs after one warm-up; `sync` (a
    callable) waits for the device after each run."""
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def per_iter_ms(run_iters, iters, repeats=5, sync=None):
    """(T(iters) - T(1)) / (iters - 1), the bench's per-iteration rule (docs/benchmarks.md):
    the fixed cost of a call (setup, transfers) cancels."""
    t_n = median_ms(lambda: run_iters(iters), repeats, sync)
    t_1 = median_ms(lambda: run_iters(1), repeats, sync)
    return max(t_n - t_1, 0.0) / (iters - 1)


def machine():
    gpu = ""
    try:
        import torch  # noqa: F401
        if torch.cuda.is_available():
            gpu = " + " + torch.cuda.get_device_name(0)
    except Exception:  # torch missing or broken: describe the host only
        pass
    return f"{socket.gethostname()} {platform.machine()} {platform.processor()}{gpu}".strip()


class PeerLog:
    """Collects entries and skips; writes the JSON."""

    def __init__(self):
        self.entries = []
        self.skipped = []

    def add(self, workload, params, peer, backend, ms, time_unit, version):
        self.entries.append({"workload": workload, "params": dict(params), "peer": peer,
                             "backend": backend, "ms": float(ms), "time_unit": time_unit,
                             "version": str(version)})
        print(f"peers: {workload} {params} {peer} ({backend}): {ms:.4g} {time_unit}",
              file=sys.stderr)

    def skip(self, peer, reason):
        self.skipped.append({"peer": peer, "reason": reason})
        print(f"peers: skipped {peer}: {reason}", file=sys.stderr)

    def document(self):
        return {"machine": machine(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "peers": self.entries, "skipped": self.skipped}

    def write(self, path):
        text = json.dumps(self.document(), indent=1)
        if path in (None, "-"):
            print(text)
        else:
            with open(path, "w") as fh:
                fh.write(text + "\n")


def try_import(name, log, peer):
    """The module, or None after logging why it is skipped."""
    try:
        return __import__(name, fromlist=["_"])
    except Exception as e:  # ImportError, or a broken install (CUDA mismatch, ...)
        log.skip(peer, f"import {name} failed: {type(e).__name__}: {e}")
        return None


def standard_args(description):
    import argparse
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default="-", help="JSON output file (default stdout)")
    ap.add_argument("--suite", default="quick", choices=["quick", "full"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where the peers run (auto: cuda when torch sees a GPU)")
    ap.add_argument("--max-n", type=int, default=1 << 30,
                    help="skip cases with n above this (a smoke test on a CPU)")
    return ap
