"""CUDA device arrays (torch): in place, on the caller's stream, results as CUDA
tensors; the stream-ordered path (outputs allocated by torch, no host round trip, no
host sync) and the synchronous one (sync=True). Marked gpu: they run only with a CUDA
build, a device and torch with CUDA (never in CI). Tolerances: the CUDA Sinkhorn is
fp32 (docs/design.md, Precision)."""

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
    otgpu.sinkhorn(x, y, eps=0.1, sync=True)  # first call of the size: the workspace grows
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    r = otgpu.sinkhorn(x, y, eps=0.1, sync=True)
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
    assert float(a.ot_eps) == pytest.approx(float(b.ot_eps), rel=1e-5)


def test_work_is_ordered_after_the_callers_stream(torch):
    x, y = clouds(torch)
    new = x * 2.0 + 1.0
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # keep the stream busy so a racing read would see x
        x.copy_(new)
        r_current = otgpu.sinkhorn(x, y, eps=0.1)  # torch's current stream: side
    # The result is written on side: the default stream reads it after waiting for side.
    torch.cuda.current_stream().wait_stream(side)
    ref = otgpu.sinkhorn(new.cpu().numpy(), y.cpu().numpy(), eps=0.1, backend="cpu")
    assert float(r_current.ot_eps) == pytest.approx(ref.ot_eps, rel=1e-3)
    x2, _ = clouds(torch, seed=1)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        x2.copy_(new)
    r_explicit = otgpu.sinkhorn(x2, y, eps=0.1, stream=side)
    torch.cuda.current_stream().wait_stream(side)
    assert float(r_explicit.ot_eps) == pytest.approx(ref.ot_eps, rel=1e-3)


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


# ---- The stream-ordered path (default for torch CUDA tensors) ----


def block_bytes(t):
    """Bytes torch's caching allocator accounts for a tensor (512-byte rounding)."""
    n = t.numel() * t.element_size()
    return (n + 511) // 512 * 512


def test_async_outputs_are_torch_tensors_and_nothing_else_is_allocated(torch):
    x, y = clouds(torch)
    stream = torch.cuda.current_stream().cuda_stream
    otgpu.sinkhorn(x, y, eps=0.1)  # first call of the size: the workspace grows
    torch.cuda.synchronize()
    allocs = otgpu._otgpu._context_allocations(x.device.index, stream)
    before = torch.cuda.memory_allocated()
    r = otgpu.sinkhorn(x, y, eps=0.1)
    assert isinstance(r, otgpu.DeviceSinkhornResult)
    outs = [r.f, r.g] + [r._out[k] for k in ("ot_eps", "transport_cost", "marginal_error",
                                             "residual", "iterations")]
    for t in outs:
        assert isinstance(t, torch.Tensor) and t.device == x.device and t.is_contiguous()
    assert r.f.dtype == torch.float32 and r._out["ot_eps"].dtype == torch.float64
    # Input zero copy and output zero copy: torch's memory grew by the outputs only,
    # and the library allocated nothing (its workspace was already large enough).
    assert torch.cuda.memory_allocated() - before == sum(block_bytes(t) for t in outs)
    assert otgpu._otgpu._context_allocations(x.device.index, stream) == allocs
    torch.cuda.synchronize()
    ref = otgpu.sinkhorn(x.cpu().numpy(), y.cpu().numpy(), eps=0.1, backend="cpu")
    assert bool(r.converged) and float(r.ot_eps) == pytest.approx(ref.ot_eps, rel=1e-3)
    sync = otgpu.sinkhorn(x, y, eps=0.1, sync=True)  # the same CUDA solve, synchronous
    np.testing.assert_allclose(r.f.cpu().numpy(), sync.f.cpu().numpy(), atol=1e-5)
    np.testing.assert_allclose(r.f.cpu().numpy(), ref.f, atol=5e-3)


def test_async_calls_return_before_the_stream_is_done(torch):
    x, y = clouds(torch)
    xh, yh = x.cpu().numpy(), y.cpu().numpy()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # Warm-up: the context exists and its workspace has grown for every call below
        # (a growth synchronizes the device, which would hide an unwanted host sync).
        w = otgpu.sinkhorn(x, y, eps=0.1)
        otgpu.barycentric_map(x, y, w)
        otgpu.gradient(x, y, w)
        otgpu.gradient(x, y, w, wrt="y")
        otgpu.sample_partners(x, y, w, seed=3)
        otgpu.assignment(x[:64], y[:64])
        otgpu.couple(x[:64], y[:64], method="exact")
    side.synchronize()
    allocs = otgpu._otgpu._context_allocations(x.device.index, side.cuda_stream)
    with torch.cuda.stream(side):
        torch.cuda._sleep(500_000_000)  # the stream stays busy long after the calls
        r = otgpu.sinkhorn(x, y, eps=0.1)
        t = otgpu.barycentric_map(x, y, r)
        gx = otgpu.gradient(x, y, r)
        gy = otgpu.gradient(x, y, r, wrt="y")
        p = otgpu.sample_partners(x, y, r, seed=3)
        a = otgpu.assignment(x[:64], y[:64])
        c = otgpu.couple(x[:64], y[:64], method="exact")
        converged = r.converged  # a device tensor: no read yet
        assert not side.query()  # every call above returned without waiting
    side.synchronize()
    assert otgpu._otgpu._context_allocations(x.device.index, side.cuda_stream) == allocs
    ref = otgpu.sinkhorn(xh, yh, eps=0.1, backend="cpu")
    assert bool(converged) and float(r.ot_eps) == pytest.approx(ref.ot_eps, rel=1e-3)
    np.testing.assert_allclose(t.cpu().numpy(), otgpu.barycentric_map(xh, yh, ref), atol=5e-3)
    np.testing.assert_allclose(gx.cpu().numpy(), otgpu.gradient(xh, yh, ref), atol=5e-3)
    np.testing.assert_allclose(gy.cpu().numpy(), otgpu.gradient(xh, yh, ref, wrt="y"),
                               atol=5e-3)
    same = (p.cpu().numpy() == otgpu.sample_partners(xh, yh, ref, seed=3)).mean()
    assert same > 0.95  # the same Gumbel keys; fp32 near-ties may flip a few
    ra = otgpu.assignment(xh[:64], yh[:64])
    np.testing.assert_array_equal(a.row_to_col.cpu().numpy(), ra.row_to_col)
    assert float(a.cost) == pytest.approx(ra.cost, rel=1e-4) and float(a.gap) < 1e-3
    rc = otgpu.couple(xh[:64], yh[:64], method="exact")
    np.testing.assert_array_equal(c.j.cpu().numpy(), rc.j)


def test_async_assignment_matches_scipy_and_reports_infeasible_by_gap(torch):
    from scipy.optimize import linear_sum_assignment
    gen = torch.Generator().manual_seed(5)
    C = torch.rand(4, 50, 50, generator=gen, dtype=torch.float64).cuda()
    r = otgpu.assignment(cost=C)
    assert r.asynchronous and r.row_to_col.dtype == torch.int64 and r.row_to_col.is_cuda
    for k in range(4):
        rows, cols = linear_sum_assignment(C[k].cpu().numpy())
        np.testing.assert_array_equal(r.row_to_col[k].cpu().numpy()[rows], cols)
    bad = torch.full((3, 3), float("inf"), device="cuda")
    bad[:, 0] = 1.0
    assert float(otgpu.assignment(cost=bad).gap) == float("inf")
    with pytest.raises(otgpu.Infeasible):
        otgpu.assignment(cost=bad, sync=True)


def test_async_couple_sinkhorn_pairs(torch):
    x0, x1 = clouds(torch, 128, 128)
    c = otgpu.couple(x0, x1, seed=1)
    assert c.i.is_cuda and c.i.shape == (128,)
    ref = otgpu.couple(x0, x1, seed=1, sync=True)  # the synchronous CUDA call
    np.testing.assert_array_equal(c.i.cpu().numpy(), ref.i.cpu().numpy())
    np.testing.assert_array_equal(c.j.cpu().numpy(), ref.j.cpu().numpy())
    cost = ((x0[c.i] - x1[c.j]) ** 2).sum(-1).mean()
    indep = ((x0[:, None] - x1[None]) ** 2).sum(-1).mean()
    assert float(cost) < 0.5 * float(indep)


def test_async_warm_start_and_wrong_device_pairs(torch):
    x, y = clouds(torch)
    r = otgpu.sinkhorn(x, y, eps=0.1)
    w = otgpu.sinkhorn(x, y, eps=0.1, f_init=r.f, g_init=r.g)
    assert int(w.iterations) <= int(r.iterations)
    assert w.f.data_ptr() != r.f.data_ptr()  # r's potentials are not overwritten
    with pytest.raises(otgpu.InvalidArgument):
        otgpu.barycentric_map(x.cpu(), y.cpu(), r)


def test_cupy_arrays_take_the_same_path(torch):
    cp = pytest.importorskip("cupy")
    x, y = clouds(torch)
    xc, yc = cp.asarray(x.cpu().numpy()), cp.asarray(y.cpu().numpy())
    r = otgpu.sinkhorn(xc, yc, eps=0.1)
    assert isinstance(r.f, cp.ndarray) and r.f.dtype == cp.float32
    ref = otgpu.sinkhorn(x.cpu().numpy(), y.cpu().numpy(), eps=0.1, backend="cpu")
    assert float(r.ot_eps) == pytest.approx(ref.ot_eps, rel=1e-3)
    a = otgpu.assignment(xc[:32], yc[:32])
    np.testing.assert_array_equal(cp.asnumpy(a.row_to_col),
                                  otgpu.assignment(x.cpu().numpy()[:32],
                                                   y.cpu().numpy()[:32]).row_to_col)
