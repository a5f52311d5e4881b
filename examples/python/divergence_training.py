"""Fit a point cloud to a target by gradient descent on the Sinkhorn divergence.

    python3 examples/python/divergence_training.py            # torch when installed
    python3 examples/python/divergence_training.py --numpy    # NumPy only (CI smoke test)

With torch, the cloud is an nn.Parameter and the loss is otgpu.torch.sinkhorn_divergence,
whose backward pass is the analytic gradient at the potentials; on a machine with a
GPU the tensors live on it and the solves run there, on torch's current stream. The
NumPy path takes the same gradient from otgpu.loss_terms. Either way the script
checks that the divergence fell by more than half and exits 1 otherwise.
"""

import argparse
import importlib.util
import sys

import numpy as np

import otgpu


def target_and_start(n, seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2 * np.pi, n)
    ring = np.stack([np.cos(t), np.sin(t)], axis=1) * 2.0 + rng.normal(scale=0.05, size=(n, 2))
    start = rng.normal(scale=0.5, size=(n, 2))
    return ring, start


def train_torch(y_np, x_np, steps, lr, eps):
    import torch

    import otgpu.torch as ott

    device = "cuda" if torch.cuda.is_available() and otgpu.cuda_available() else "cpu"
    y = torch.tensor(y_np, dtype=torch.float32, device=device)
    x = torch.nn.Parameter(torch.tensor(x_np, dtype=torch.float32, device=device))
    opt = torch.optim.Adam([x], lr=lr)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = ott.sinkhorn_divergence(x, y, eps=eps)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if step % max(1, steps // 10) == 0:
            print(f"step {step:4d}  S_eps = {losses[-1]:.5f}  ({device})")
    return losses


def train_numpy(y, x, steps, lr, eps):
    x = x.copy()
    n = x.shape[0]
    losses = []
    for step in range(steps):
        terms = otgpu.loss_terms(x, y, debiased=True, eps=eps)
        # The gradient of S_eps with respect to x_i carries the weight a_i = 1/n: scale
        # it by n so every point moves as if it alone were fitted (a Lagrangian step).
        x -= lr * n * terms.grad_x()
        losses.append(float(terms.value))
        if step % max(1, steps // 10) == 0:
            print(f"step {step:4d}  S_eps = {losses[-1]:.5f}  (numpy)")
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numpy", action="store_true", help="use the NumPy path even with torch")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    y, x0 = target_and_start(args.n, args.seed)
    use_torch = not args.numpy and importlib.util.find_spec("torch") is not None
    if use_torch:
        losses = train_torch(y, x0, args.steps, lr=0.05, eps=args.eps)
    else:
        losses = train_numpy(y, x0, args.steps, lr=0.2, eps=args.eps)
    print(f"S_eps: {losses[0]:.5f} -> {losses[-1]:.5f} in {args.steps} steps")
    if not losses[-1] < 0.5 * losses[0]:
        print("the divergence did not fall by half", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
