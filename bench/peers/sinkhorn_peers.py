#!/usr/bin/env python3
"""Peers of the Sinkhorn rows of `otgpu bench` (W1 online, W1d dense, W2 batched), on the
same data (peer_common.make_points, the bench's generator and seeds) and the same
timing rule: ms per iteration = (T(N) - T(1)) / (N - 1) at a fixed eps, no
convergence checks, N = 100 (20 at n >= 65536 with d = 64, as our rows).

Peers, each only where importable (else a skip with the reason):
  flash-sinkhorn   FlashSinkhorn's SamplesLoss, alternating updates, fixed eps and
                   iterations, fp32 (and TF32 as a second entry)
  pot-torch        POT ot.sinkhorn(method="sinkhorn_log") on torch tensors (dense C)
  torch-compile    a log-domain Sinkhorn loop (dense C) under torch.compile
  geomloss         GeomLoss sinkhorn_loop with a list of N equal eps, tensorized
                   (dense), or online through KeOps when pykeops is importable
  ott-jax          OTT-JAX Sinkhorn with min = max iterations and threshold -1
                   (online PointCloud for W1, dense for W1d, vmap for W2)
  pot-numpy        POT's numpy backend, CPU only (a smoke test where torch is absent)
The cost is the full squared Euclidean |x - y|^2 and eps is absolute, as in our rows.
"""

import math
import sys

import numpy as np

import peer_common as pc

EPS_W1 = 0.01


def iters_for(n, d):
    return 20 if n >= 65536 and d == 64 else 100


class Torch:
    """torch, the device to use and its synchronization."""

    def __init__(self, log, want):
        self.torch = pc.try_import("torch", log, "torch peers")
        self.device = None
        if self.torch is None:
            return
        has_cuda = self.torch.cuda.is_available()
        if want == "cuda" and not has_cuda:
            log.skip("torch peers", "--device cuda but torch sees no GPU")
            self.torch = None
            return
        self.device = "cuda" if (want in ("auto", "cuda") and has_cuda) else "cpu"
        torch = self.torch
        # fp32 as our rows: no TF32 unless a peer asks for it.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def tensor(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @property
    def backend(self):
        return "cuda" if self.device == "cuda" else "cpu"


def sqdist_torch(torch, x, y):
    """Full |x - y|^2, [..., n, m], computed in the expanded form as the peers do."""
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True).transpose(-2, -1)
    return (x2 + y2 - 2.0 * x @ y.transpose(-2, -1)).clamp_min(0)


def log_sinkhorn_dense(torch, C, eps, iters):
    """Alternating log-domain updates on a dense cost [..., n, m], uniform weights."""
    n, m = C.shape[-2], C.shape[-1]
    la = -math.log(n)
    lb = -math.log(m)
    g = torch.zeros(C.shape[:-2] + (m,), device=C.device, dtype=C.dtype)
    f = torch.zeros(C.shape[:-2] + (n,), device=C.device, dtype=C.dtype)
    for _ in range(iters):
        f = -eps * torch.logsumexp(lb + (g.unsqueeze(-2) - C) / eps, dim=-1)
        g = -eps * torch.logsumexp(la + (f.unsqueeze(-1) - C) / eps, dim=-2)
    return f, g


# ---- peers -----------------------------------------------------------------------------


def flash_sinkhorn(log, T, cases, repeats):
    if T.torch is None or T.device != "cuda":
        log.skip("flash-sinkhorn", "needs torch with a CUDA device (Triton kernels)")
        return
    mod, version = None, "?"
    for name in ("flash_sinkhorn", "ot_triton"):
        try:
            mod = __import__(name)
            version = getattr(mod, "__version__", "?")
            break
        except Exception as e:  # try the other package name
            err = e
    if mod is None:
        log.skip("flash-sinkhorn", f"import flash_sinkhorn / ot_triton failed: {err}")
        return
    torch = T.torch
    for workload, params, x, y in cases:
        if workload != "W1":
            continue
        n, d = params["n"], params["d"]
        xt, yt = T.tensor(x[0]), T.tensor(y[0])
        a = torch.full((n,), 1.0 / n, device=T.device)
        b = torch.full((n,), 1.0 / n, device=T.device)
        for tf32 in (False, True):
            def run(iters, tf32=tf32):
                loss = mod.SamplesLoss("sinkhorn", backend="alternating",
                                       use_epsilon_scaling=False, eps=params["eps"],
                                       n_iters=iters, debias=False, potentials=False,
                                       normalize=False, last_extrapolation=False,
                                       allow_tf32=tf32)
                return loss(a, xt, b, yt)
            try:
                ms = pc.per_iter_ms(run, iters_for(n, d), repeats, T.sync)
            except Exception as e:  # an API change or OOM: say so, keep going
                log.skip(f"flash-sinkhorn {workload} {params}", f"{type(e).__name__}: {e}")
                break
            log.add(workload, params, "flash-sinkhorn" + ("-tf32" if tf32 else ""), "cuda", ms,
                    "ms/iter", version)


def dense_cost_fits(T, B, n, m):
    bytes_needed = 4 * B * n * m * 3  # C plus two temporaries of the LSE
    if T.device == "cuda":
        free, _ = T.torch.cuda.mem_get_info()
        return bytes_needed < 0.8 * free
    return bytes_needed < 4 << 30


def pot_torch(log, T, cases, repeats):
    ot = pc.try_import("ot", log, "pot-torch")
    if ot is None or T.torch is None:
        if T.torch is None:
            log.skip("pot-torch", "torch is not importable")
        return
    torch = T.torch
    for workload, params, x, y in cases:
        if workload == "W2":
            continue  # POT solves one problem per call
        n, d = params["n"], params["d"]
        if not dense_cost_fits(T, 1, n, n):
            log.skip(f"pot-torch {workload} {params}", "the dense cost does not fit")
            continue
        xt, yt = T.tensor(x[0]), T.tensor(y[0])
        C = sqdist_torch(torch, xt, yt)
        a = torch.full((n,), 1.0 / n, device=T.device)

        def run(iters):
            return ot.sinkhorn(a, a, C, params["eps"], method="sinkhorn_log", numItermax=iters,
                               stopThr=0.0, warn=False)
        ms = pc.per_iter_ms(run, iters_for(n, d), repeats, T.sync)
        log.add(workload, params, "pot-torch", T.backend, ms, "ms/iter", ot.__version__)
        del C


def torch_compile(log, T, cases, repeats):
    if T.torch is None:
        log.skip("torch-compile", "torch is not importable")
        return
    torch = T.torch
    if not hasattr(torch, "compile"):
        log.skip("torch-compile", f"torch {torch.__version__} has no torch.compile")
        return
    for workload, params, x, y in cases:
        B = params.get("B", 1)
        n, d = params["n"], params["d"]
        if not dense_cost_fits(T, B, n, n):
            log.skip(f"torch-compile {workload} {params}", "the dense cost does not fit")
            continue
        xt = T.tensor(x if B > 1 else x[0])
        yt = T.tensor(y if B > 1 else y[0])
        C = sqdist_torch(torch, xt, yt)
        eps = params["eps"]
        compiled = {}

        def run(iters):
            if iters not in compiled:
                compiled[iters] = torch.compile(
                    lambda c, k=iters: log_sinkhorn_dense(torch, c, eps, k), dynamic=False)
            return compiled[iters](C)
        try:
            ms = pc.per_iter_ms(run, iters_for(n, d), repeats, T.sync)
        except Exception as e:  # no compiler toolchain on the machine, OOM, ...
            log.skip(f"torch-compile {workload} {params}", f"{type(e).__name__}: {e}")
            continue
        log.add(workload, params, "torch-compile", T.backend, ms, "ms/iter", torch.__version__)
        del C


def geomloss(log, T, cases, repeats):
    gl = pc.try_import("geomloss", log, "geomloss")
    if gl is None or T.torch is None:
        if T.torch is None and gl is not None:
            log.skip("geomloss", "torch is not importable")
        return
    from functools import partial

    from geomloss.sinkhorn_divergence import log_weights, sinkhorn_loop
    from geomloss.sinkhorn_samples import softmin_tensorized
    online = None
    try:
        from geomloss.sinkhorn_samples import lse_genred, softmin_online
        import pykeops  # noqa: F401
        online = (lse_genred, softmin_online)
    except Exception as e:  # KeOps absent: tensorized only
        log.skip("geomloss online (KeOps)", f"{type(e).__name__}: {e}")
    torch = T.torch
    version = getattr(gl, "__version__", "?")
    for workload, params, x, y in cases:
        if workload == "W2":
            continue
        n, d = params["n"], params["d"]
        xt, yt = T.tensor(x[0]), T.tensor(y[0])
        a = torch.full((n,), 1.0 / n, device=T.device)
        if workload == "W1" and online is not None:
            lse = online[0]("SqDist(X,Y)", d)
            softmin = partial(online[1], log_conv=lse)
            Cxy, Cyx, la, lb, name = (xt, yt), (yt, xt), log_weights(a), log_weights(a), \
                "geomloss-keops"
        else:
            if not dense_cost_fits(T, 1, n, n):
                log.skip(f"geomloss {workload} {params}", "the dense cost does not fit")
                continue
            C = sqdist_torch(torch, xt, yt).unsqueeze(0)
            softmin = softmin_tensorized
            Cxy, Cyx = C, C.transpose(-1, -2)
            la, lb = log_weights(a).unsqueeze(0), log_weights(a).unsqueeze(0)
            name = "geomloss-tensorized"

        def run(iters):
            return sinkhorn_loop(softmin, la, lb, None, None, Cxy, Cyx, [params["eps"]] * iters,
                                 rho=None, debias=False, last_extrapolation=False)
        try:
            ms = pc.per_iter_ms(run, iters_for(n, d), repeats, T.sync)
        except Exception as e:  # API change, OOM
            log.skip(f"{name} {workload} {params}", f"{type(e).__name__}: {e}")
            continue
        log.add(workload, params, name, T.backend, ms, "ms/iter", version)


def ott_jax(log, cases, repeats, want):
    jax = pc.try_import("jax", log, "ott-jax")
    ott = pc.try_import("ott", log, "ott-jax") if jax is not None else None
    if jax is None or ott is None:
        return
    import jax.numpy as jnp
    from ott.geometry import geometry, pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn
    backend = jax.default_backend()
    if want == "cpu" and backend != "cpu":
        log.skip("ott-jax", "--device cpu, but JAX runs on " + backend)
        return
    be = "cuda" if backend == "gpu" else "cpu"
    version = getattr(ott, "__version__", "?")

    def solver_for(iters):
        return sinkhorn.Sinkhorn(min_iterations=iters, max_iterations=iters, threshold=-1.0)

    for workload, params, x, y in cases:
        n, d, eps = params["n"], params["d"], params["eps"]

        def make(iters, workload=workload, x=x, y=y):
            solver = solver_for(iters)
            if workload == "W2":
                def one(xb, yb):
                    geom = pointcloud.PointCloud(xb, yb, epsilon=eps)
                    return solver(linear_problem.LinearProblem(geom)).reg_ot_cost
                fn = jax.jit(jax.vmap(one))
                xs, ys = jnp.asarray(x), jnp.asarray(y)
                return lambda: fn(xs, ys).block_until_ready()
            if workload == "W1d":
                xs, ys = jnp.asarray(x[0]), jnp.asarray(y[0])
                cost = pointcloud.PointCloud(xs, ys).cost_matrix

                @jax.jit
                def dense(c):
                    return solver(linear_problem.LinearProblem(
                        geometry.Geometry(cost_matrix=c, epsilon=eps))).reg_ot_cost
                return lambda: dense(cost).block_until_ready()
            xs, ys = jnp.asarray(x[0]), jnp.asarray(y[0])

            @jax.jit
            def online(a, b):
                geom = pointcloud.PointCloud(a, b, epsilon=eps, batch_size=min(n, 4096))
                return solver(linear_problem.LinearProblem(geom)).reg_ot_cost
            return lambda: online(xs, ys).block_until_ready()

        runners = {}

        def run(iters):
            if iters not in runners:
                runners[iters] = make(iters)
            return runners[iters]()
        try:
            ms = pc.per_iter_ms(run, iters_for(n, d), repeats)
        except Exception as e:  # OOM, API change
            log.skip(f"ott-jax {workload} {params}", f"{type(e).__name__}: {e}")
            continue
        log.add(workload, params, "ott-jax" + ("-vmap" if workload == "W2" else ""), be, ms,
                "ms/iter", version)


def pot_numpy(log, cases, repeats):
    ot = pc.try_import("ot", log, "pot-numpy")
    if ot is None:
        return
    for workload, params, x, y in cases:
        if workload == "W2":
            continue
        n, d = params["n"], params["d"]
        if n > 1024:
            log.skip(f"pot-numpy {workload} {params}", "n > 1024 on the CPU smoke path")
            continue
        xd, yd = x[0].astype(np.float64), y[0].astype(np.float64)
        C = ot.dist(xd, yd)
        a = np.full(n, 1.0 / n)

        def run(iters):
            return ot.sinkhorn(a, a, C, params["eps"], method="sinkhorn_log", numItermax=iters,
                               stopThr=0.0, warn=False)
        ms = pc.per_iter_ms(run, 10, repeats)
        log.add(workload, params, "pot-numpy", "cpu", ms, "ms/iter", ot.__version__)


def main():
    ap = pc.standard_args(__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W1,W1d,W2")
    args = ap.parse_args()
    wanted = set(args.workloads.split(","))
    log = pc.PeerLog()
    cases = []
    if "W1" in wanted:
        for params in pc.w1_cases(args.suite):
            if params["n"] <= args.max_n:
                x, y = pc.make_points(1, params["n"], params["m"], params["d"], pc.SEED_W1_GPU)
                cases.append(("W1", params, x, y))
    T = Torch(log, args.device)
    if "W1" in wanted and (T.device != "cuda"):
        # The CPU rows of W1 (n = 1024, seed 1): what a CPU peer is compared with.
        for d in (2, 64):
            x, y = pc.make_points(1, 1024, 1024, d, pc.SEED_W1_CPU)
            cases.append(("W1", {"n": 1024, "m": 1024, "d": d, "eps": EPS_W1}, x, y))
    if "W1d" in wanted:
        for params in pc.W1D_CASES:
            if params["n"] <= args.max_n:
                x, y = pc.make_points(1, params["n"], params["m"], params["d"], pc.SEED_W1D)
                cases.append(("W1d", params, x, y))
    if "W2" in wanted:
        for params in pc.W2_CASES:
            if params["n"] <= args.max_n:
                x, y = pc.make_points(params["B"], params["n"], params["m"], params["d"],
                                      pc.SEED_W2)
                cases.append(("W2", params, x, y))
    flash_sinkhorn(log, T, cases, args.repeats)
    pot_torch(log, T, cases, args.repeats)
    torch_compile(log, T, cases, args.repeats)
    geomloss(log, T, cases, args.repeats)
    ott_jax(log, cases, args.repeats, args.device)
    if args.device == "cpu" or T.torch is None:
        pot_numpy(log, cases, args.repeats)
    log.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
