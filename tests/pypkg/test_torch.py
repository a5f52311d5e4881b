"""otgpu.torch: autograd through the analytic gradients, against finite differences.
Skipped where torch is not installed (CI has no torch); the GPU case is marked gpu."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import otgpu.torch as ott  # noqa: E402

from conftest import torch_cuda  # noqa: E402


def check_against_finite_differences(device):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    y = (torch.randn(8, 2, generator=gen, dtype=torch.float64) + 0.5).to(device)
    y.requires_grad_()
    tol = 1e-12 if device == "cpu" else 1e-4
    for loss in (ott.sinkhorn_loss, ott.sinkhorn_divergence):
        value = loss(x, y, eps=0.3, tol=tol)
        assert value.dim() == 0 and value.device.type == torch.device(device).type
        gx, gy = torch.autograd.grad(value, (x, y))
        h = 1e-5
        for (arr, g, which) in ((x, gx, 0), (y, gy, 1)):
            for idx in [(0, 0), (3, 1)]:
                plus, minus = arr.detach().clone(), arr.detach().clone()
                plus[idx] += h
                minus[idx] -= h
                args_p = (plus, y.detach()) if which == 0 else (x.detach(), plus)
                args_m = (minus, y.detach()) if which == 0 else (x.detach(), minus)
                num = (loss(*args_p, eps=0.3, tol=tol) - loss(*args_m, eps=0.3, tol=tol)) / (2 * h)
                rel = 1e-5 if device == "cpu" else 2e-2
                assert float(g[idx]) == pytest.approx(float(num), rel=rel, abs=1e-7)


def test_autograd_matches_finite_differences_cpu():
    check_against_finite_differences("cpu")


def test_batched_loss_and_weighted_backward_cpu():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 7, 2, generator=gen, dtype=torch.float64)
    value = ott.sinkhorn_divergence(x, y, eps=0.3, tol=1e-12)
    assert value.shape == (3,)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    (gx,) = torch.autograd.grad((w * value).sum(), (x,))
    for k in range(3):
        xk = x[k].detach().clone().requires_grad_()
        (gk,) = torch.autograd.grad(ott.sinkhorn_divergence(xk, y[k], eps=0.3, tol=1e-12), (xk,))
        np.testing.assert_allclose(gx[k].numpy(), w[k].item() * gk.numpy(), atol=1e-9)


@pytest.mark.gpu
def test_autograd_on_cuda_tensors():
    check_against_finite_differences("cuda")
