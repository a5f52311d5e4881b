"""CUDA device arrays (torch): in place, on the caller's stream, results as CUDA
tensors. Marked gpu: they run only with a CUDA build, a device and torch with CUDA
(never in CI). Tolerances: the CUDA Sinkhorn is fp32 (docs/design.md, Precision)."""

import numpy as np
import pytest

import otgpu
from conftest import torch_cuda

pytestmark = pytest.mark.gpu


@pytest.fixture
def torch():
    return torch_cuda()


def clouds(torch, n=200, m=300, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=gen).cuda(),
            (torch.randn(m, d, generator=gen) + 0.5).cuda())


def test_cuda_tensors_are_read_in_place_and_results_stay_on_the_device(torch):
    x, y = clouds(torch)
    otgpu.sinkhorn(x, y, eps=0.1)  # first call of the size: the context's workspace grows
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    r = otgpu.sinkhorn(x, y, eps=0.1)
    assert torch.cuda.memory_allocated() == before  # torch copied nothing
    assert r.backend == "cuda" and r.converged
    assert r.f.is_cuda and r.f.dtype == torch.float32 and r.f.device == x.device
    ref = otgpu.sinkhorn(x.cpu().numpy(), y.cpu().numpy(), eps=0.1, backend="cpu")
    assert r.ot_eps == pytest.approx(ref.ot_eps, rel=1e-3)
    m = otgpu.barycentric_map(x, y, r)
    assert m.is_cuda and m.shape == x.shape
    np.testing.assert_allclose(m.cpu().numpy(),
                               otgpu.barycentric_map(x.cpu().numpy(), y.cpu().numpy(), ref),
                               atol=5e-3)
    p = otgpu.sample_partners(x, y, r, seed=1)
    assert p.is_cuda and p.dtype == torch.int64 and int(p.max()) < y.shape[0]


def test_non_contiguous_cuda_views(torch):
    x, y = clouds(torch)
    xt = x.t().contiguous().t()  # column-major view of the same values
    assert not xt.is_contiguous()
    a = otgpu.sinkhorn(xt, y, eps=0.1)
    b = otgpu.sinkhorn(x, y, eps=0.1)
    assert a.ot_eps == pytest.approx(b.ot_eps, rel=1e-5)


def test_work_is_ordered_after_the_callers_stream(torch):
    x, y = clouds(torch)
    new = x * 2.0 + 1.0
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # keep the stream busy so a racing read would see x
        x.copy_(new)
        r_current = otgpu.sinkhorn(x, y, eps=0.1)  # torch's current stream: side
    ref = otgpu.sinkhorn(new.cpu().numpy(), y.cpu().numpy(), eps=0.1, backend="cpu")
    assert r_current.ot_eps == pytest.approx(ref.ot_eps, rel=1e-3)
    x2, _ = clouds(torch, seed=1)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        x2.copy_(new)
    r_explicit = otgpu.sinkhorn(x2, y, eps=0.1, stream=side)
    assert r_explicit.ot_eps == pytest.approx(ref.ot_eps, rel=1e-3)


def test_one_cached_context_per_device_and_stream(torch):
    x, y = clouds(torch, 64, 64)
    s = torch.cuda.Stream()
    otgpu.sinkhorn(x, y, eps=0.1, stream=s)
    count = otgpu._otgpu.context_count()
    for _ in range(5):
        otgpu.sinkhorn(x, y, eps=0.1, stream=s)
    assert otgpu._otgpu.context_count() == count
    otgpu.sinkhorn(x, y, eps=0.1, stream=torch.cuda.Stream())
    assert otgpu._otgpu.context_count() == count + 1


def test_sliced_and_gaussian_on_cuda(torch):
    x, y = clouds(torch)
    r = otgpu.sliced_wasserstein(x, y, projections=32, seed=2, gradients=True)
    ref = otgpu.sliced_wasserstein(x.cpu().numpy(), y.cpu().numpy(), projections=32, seed=2,
                                   backend="cpu")
    assert r.backend == "cuda" and r.value == pytest.approx(ref.value, rel=1e-4)
    assert r.grad_x.is_cuda
    mean = torch.zeros(3, dtype=torch.float64, device="cuda")
    cov = torch.eye(3, dtype=torch.float64, device="cuda")
    g = otgpu.gaussian_ot(mean, cov, mean + 1, 2 * cov)
    assert g.backend == "cuda"
    expect = 3.0 + 3 * (1 + 2 - 2 * np.sqrt(2))
    assert g.w2_squared == pytest.approx(expect, rel=1e-10)


def test_backend_cpu_refuses_device_memory(torch):
    x, y = clouds(torch, 16, 16)
    with pytest.raises(otgpu.InvalidArgument, match="backend cpu cannot read device memory"):
        otgpu.sinkhorn(x, y, backend="cpu")
