#!/usr/bin/env python3
"""Peers of the W3 rows of `otgpu bench` (sliced W2, L = 256 directions, p = 2), on the
same data (peer_common.sliced_data: the bench's generator, seed 20240607), timed per
call (ms/call, median after a warm-up), as our rows.

Peers, each only where importable (else a skip with the reason):
  torch-sliced     plain PyTorch: Gaussian directions normalized, X theta and Y theta
                   (fp32 matmul, no TF32), sort along the points, mean squared
                   difference of the sorted projections (equal uniform weights)
  pot-torch        POT ot.sliced_wasserstein_distance on torch tensors
  pot-numpy        POT on numpy, CPU only (a smoke test where torch is absent), at the
                   CPU row's size (n = 4096, d = 64, L = 64)
"""

import sys

import numpy as np

import peer_common as pc


def torch_peers(log, cases, repeats, want):
    torch = pc.try_import("torch", log, "torch-sliced")
    if torch is None:
        log.skip("pot-torch (sliced)", "torch is not importable")
        return False
    has_cuda = torch.cuda.is_available()
    if want == "cuda" and not has_cuda:
        log.skip("torch-sliced", "--device cuda but torch sees no GPU")
        return False
    device = "cuda" if (want in ("auto", "cuda") and has_cuda) else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if device == "cuda" else None
    backend = "cuda" if device == "cuda" else "cpu"
    ot = None
    try:
        import ot  # noqa: F811
    except Exception as e:  # POT absent: torch only
        log.skip("pot-torch (sliced)", f"import ot failed: {type(e).__name__}: {e}")
    for params in cases:
        n, d, L = params["n"], params["d"], params["L"]
        if device == "cpu" and n > 4096:
            continue
        x, y = pc.sliced_data(n, d)
        try:
            X = torch.from_numpy(x).to(device)
            Y = torch.from_numpy(y).to(device)
        except Exception as e:  # OOM at 2^20 x 3072 on a small device
            log.skip(f"torch-sliced W3 {params}", f"{type(e).__name__}: {e}")
            continue
        gen = torch.Generator(device=device).manual_seed(0)

        def plain():
            theta = torch.randn(d, L, device=device, generator=gen)
            theta = theta / theta.norm(dim=0, keepdim=True)
            px, _ = torch.sort(X @ theta, dim=0)
            py, _ = torch.sort(Y @ theta, dim=0)
            return ((px - py) ** 2).mean().sqrt()
        try:
            ms = pc.median_ms(plain, repeats, sync)
            log.add("W3", params, "torch-sliced", backend, ms, "ms/call", torch.__version__)
        except Exception as e:  # OOM
            log.skip(f"torch-sliced W3 {params}", f"{type(e).__name__}: {e}")
        if ot is not None:
            try:
                ms = pc.median_ms(lambda: ot.sliced_wasserstein_distance(
                    X, Y, n_projections=L, p=2, seed=0), repeats, sync)
                log.add("W3", params, "pot-torch", backend, ms, "ms/call", ot.__version__)
            except Exception as e:  # OOM, API change
                log.skip(f"pot-torch W3 {params}", f"{type(e).__name__}: {e}")
        del X, Y
        if device == "cuda":
            torch.cuda.empty_cache()
    return True


def pot_numpy(log, repeats):
    ot = pc.try_import("ot", log, "pot-numpy (sliced)")
    if ot is None:
        return
    params = {"n": 4096, "m": 4096, "d": 64, "L": 64, "p": 2}  # the CPU row
    x, y = pc.sliced_data(4096, 64)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    ms = pc.median_ms(lambda: ot.sliced_wasserstein_distance(xd, yd, n_projections=64, p=2,
                                                             seed=0), repeats)
    log.add("W3", params, "pot-numpy", "cpu", ms, "ms/call", ot.__version__)


def main():
    ap = pc.standard_args(__doc__.splitlines()[0])
    args = ap.parse_args()
    log = pc.PeerLog()
    cases = [c for c in pc.w3_cases(args.suite) if c["n"] <= args.max_n]
    ran_torch = torch_peers(log, cases, args.repeats, args.device)
    if args.device == "cpu" or not ran_torch:
        pot_numpy(log, args.repeats)
    log.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
