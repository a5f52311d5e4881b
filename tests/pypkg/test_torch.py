"""otgpu.torch: autograd through the analytic gradients, against finite differences.
Skipped where torch is not installed (CI has no torch); the GPU case is marked gpu."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import otgpu.torch as ott  # noqa: E402


def clouds(device):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    y = (torch.randn(8, 2, generator=gen, dtype=torch.float64) + 0.5).to(device)
    return x, y.requires_grad_()


def check_against_finite_differences(device):
    x, y = clouds(device)
    for loss in (ott.sinkhorn_loss, ott.sinkhorn_divergence):
        value = loss(x, y, eps=0.3, tol=1e-12)
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
                num = (loss(*args_p, eps=0.3, tol=1e-12)
                       - loss(*args_m, eps=0.3, tol=1e-12)) / (2 * h)
                assert float(g[idx]) == pytest.approx(float(num), rel=1e-5, abs=1e-8)


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
def test_autograd_on_cuda_tensors_matches_the_cpu():
    # The CUDA backend is fp32 (tol 1e-4): its gradients agree with the fp64 CPU ones
    # to about 1e-3, too coarse for finite differences, so compare with the CPU.
    for loss in (ott.sinkhorn_loss, ott.sinkhorn_divergence):
        grads = {}
        for device in ("cpu", "cuda"):
            x, y = clouds(device)
            value = loss(x, y, eps=0.3, tol=1e-12 if device == "cpu" else 1e-4)
            grads[device] = [g.cpu().numpy() for g in torch.autograd.grad(value, (x, y))]
            assert grads[device][0].shape == (6, 2)
        for gc, gg in zip(grads["cpu"], grads["cuda"]):
            np.testing.assert_allclose(gg, gc, atol=2e-3)
