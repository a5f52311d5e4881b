"""Flow matching with OT couplings: pair noise samples with data samples by an optimal
transport coupling of each minibatch, then regress the velocity field on straight paths.

    python3 examples/python/flow_matching_ot.py                      # torch MLP when installed
    python3 examples/python/flow_matching_ot.py --numpy              # NumPy only (CI smoke test)
    python3 examples/python/flow_matching_ot.py --coupling sinkhorn  # entropic plan draws

One training step (minibatch OT conditional flow matching):
  1. x0 ~ N(0, I) (noise) and x1 from the data, B points each;
  2. pairs (i, j) from otgpu.couple: "exact" the optimal permutation (the exact
     assignment), "sinkhorn" B distinct pairs drawn from the entropic plan (never
     formed), or "partners" one partner per noise point drawn from the rows of a
     Sinkhorn plan (otgpu.sinkhorn + otgpu.sample_partners; the fallback when the
     package has no couple);
  3. t ~ U(0, 1), x_t = (1 - t) x0_i + t x1_j, target velocity u = x1_j - x0_i;
  4. minimise |v(x_t, t) - u|^2.
Coupled pairs are shorter than independent ones (the paths cross less), which is what
makes the regression easier; the script prints both mean squared lengths and exits 1
if the OT pairs are not shorter. On CUDA tensors the coupling is stream-ordered: the
pair indices are torch tensors on the device, queued on the current stream, and the
step never waits for the host (docs/python.md, "The device path").
"""

import argparse
import importlib.util
import sys

import numpy as np

import otgpu


def data(rng, n):
    """Two Gaussian blobs at (+-2, 1)."""
    centres = np.array([[-2.0, 1.0], [2.0, 1.0]])
    return centres[rng.integers(0, 2, n)] + 0.3 * rng.normal(size=(n, 2))


def ot_pairs(x0, x1, coupling, eps, seed):
    """(x0_i, x1_j) over the coupled pairs of the minibatch."""
    if coupling == "partners" or not hasattr(otgpu, "couple"):
        result = otgpu.sinkhorn(x0, x1, eps=eps, eps_relative=True)
        j = otgpu.sample_partners(x0, x1, result, seed=seed)
        return x0, x1[j]
    c = otgpu.couple(x0, x1, method=coupling, eps=eps, eps_relative=True, seed=seed)
    return x0[c.i], x1[c.j]


def features(xt, t):
    # A small fixed basis for the NumPy path's linear regression: [x, t, x t, 1].
    return np.concatenate([xt, t, xt * t, np.ones_like(t)], axis=1)


def train_numpy(args):
    rng = np.random.default_rng(args.seed)
    W = np.zeros((6, 2))
    ot_len, ind_len = [], []
    for step in range(args.steps):
        x0 = rng.normal(size=(args.batch, 2))
        x1 = data(rng, args.batch)
        x0_paired, x1_paired = ot_pairs(x0, x1, args.coupling, args.eps, seed=step)
        ot_len.append(np.mean(np.sum((x1_paired - x0_paired) ** 2, 1)))
        ind_len.append(np.mean(np.sum((x1 - x0) ** 2, 1)))
        t = rng.uniform(size=(len(x0_paired), 1))
        xt = (1 - t) * x0_paired + t * x1_paired
        u = x1_paired - x0_paired
        phi = features(xt, t)
        # One gradient step on the mean squared velocity error.
        grad = phi.T @ (phi @ W - u) * (2 / len(u))
        W -= 0.1 * grad
        if step % max(1, args.steps // 5) == 0:
            loss = np.mean(np.sum((phi @ W - u) ** 2, 1))
            print(f"step {step:3d}  velocity loss {loss:.4f}  (numpy)")
    return float(np.mean(ot_len)), float(np.mean(ind_len))


def train_torch(args):
    import torch

    device = "cuda" if torch.cuda.is_available() and otgpu.cuda_available() else "cpu"
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                              torch.nn.SiLU(), torch.nn.Linear(64, 2)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ot_len, ind_len = [], []
    for step in range(args.steps):
        x0 = torch.randn(args.batch, 2, generator=gen).to(device)
        x1 = torch.tensor(data(rng, args.batch), dtype=torch.float32, device=device)
        # Stays on the device; on CUDA nothing here waits for the host.
        x0_paired, x1_paired = ot_pairs(x0, x1, args.coupling, args.eps, seed=step)
        ot_len.append(((x1_paired - x0_paired) ** 2).sum(1).mean())
        ind_len.append(((x1 - x0) ** 2).sum(1).mean())
        t = torch.rand(len(x0_paired), 1, generator=gen).to(device)
        xt = (1 - t) * x0_paired + t * x1_paired
        loss = ((net(torch.cat([xt, t], 1)) - (x1_paired - x0_paired)) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:3d}  velocity loss {float(loss):.4f}  ({device})")
    return float(torch.stack(ot_len).mean()), float(torch.stack(ind_len).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numpy", action="store_true", help="use the NumPy path even with torch")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--coupling", choices=["exact", "sinkhorn", "partners"], default="exact",
                    help="exact permutation, entropic plan draws, or sampled partners")
    ap.add_argument("--eps", type=float, default=0.01,
                    help="entropic eps (sinkhorn, partners), relative to the mean cost")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    use_torch = not args.numpy and importlib.util.find_spec("torch") is not None
    ot_len, ind_len = train_torch(args) if use_torch else train_numpy(args)
    print(f"mean |x1 - x0|^2: OT pairs {ot_len:.3f}, independent pairs {ind_len:.3f}")
    if not ot_len < ind_len:
        print("the OT pairs are not shorter than independent ones", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
