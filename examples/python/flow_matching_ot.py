"""Flow matching with OT couplings: pair each noise sample with a data sample drawn
from an entropic OT plan, then regress the velocity field on straight paths.

    python3 examples/python/flow_matching_ot.py            # torch MLP when installed
    python3 examples/python/flow_matching_ot.py --numpy    # NumPy only (CI smoke test)

One training step (minibatch OT conditional flow matching):
  1. x0 ~ N(0, I) (noise) and x1 from the data, B points each;
  2. otgpu.sinkhorn(x0, x1) and otgpu.sample_partners: one partner j(i) per noise point,
     drawn from the plan's row P_i. / sum_j P_ij (reproducible by seed, never forming P);
  3. t ~ U(0, 1), x_t = (1 - t) x0_i + t x1_j(i), target velocity u = x1_j(i) - x0_i;
  4. minimise |v(x_t, t) - u|^2.
Coupled pairs are shorter than independent ones (the paths cross less), which is what
makes the regression easier; the script prints both mean squared lengths and exits 1
if the OT pairs are not shorter. (The exact assignment and the library's own coupling
entry points will replace step 2 once they land; see docs/python.md.)
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


def ot_pairs(x0, x1, eps, seed):
    result = otgpu.sinkhorn(x0, x1, eps=eps, eps_relative=True)
    j = otgpu.sample_partners(x0, x1, result, seed=seed)
    return x1[j] if isinstance(j, np.ndarray) else x1[j.long()]


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
        x1_paired = ot_pairs(x0, x1, args.eps, seed=step)
        ot_len.append(np.mean(np.sum((x1_paired - x0) ** 2, 1)))
        ind_len.append(np.mean(np.sum((x1 - x0) ** 2, 1)))
        t = rng.uniform(size=(args.batch, 1))
        xt = (1 - t) * x0 + t * x1_paired
        u = x1_paired - x0
        phi = features(xt, t)
        # One gradient step on the mean squared velocity error.
        grad = phi.T @ (phi @ W - u) * (2 / args.batch)
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
        x1_paired = ot_pairs(x0, x1, args.eps, seed=step)  # stays on the device
        ot_len.append(float(((x1_paired - x0) ** 2).sum(1).mean()))
        ind_len.append(float(((x1 - x0) ** 2).sum(1).mean()))
        t = torch.rand(args.batch, 1, generator=gen).to(device)
        xt = (1 - t) * x0 + t * x1_paired
        loss = ((net(torch.cat([xt, t], 1)) - (x1_paired - x0)) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:3d}  velocity loss {float(loss):.4f}  ({device})")
    return float(np.mean(ot_len)), float(np.mean(ind_len))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numpy", action="store_true", help="use the NumPy path even with torch")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eps", type=float, default=0.01, help="relative to the mean cost")
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
