"""The ``devices`` option of the Sinkhorn entry points (SinkhornOptions::devices): a
solve of host arrays split by rows over several CUDA devices or logical shards of
one. The option's checks are the library's, raised as the package's exceptions
naming the argument; the split solve itself, and its derived outputs from each
shard's kept state, are checked against the plain solve on a GPU (marked gpu)."""

import numpy as np
import pytest

import otgpu


def clouds(rng, n=40, m=30, d=2):
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.3


def test_cpu_backend_with_devices_names_the_argument(rng):
    x, y = clouds(rng)
    with pytest.raises(otgpu.InvalidArgument, match=r"devices: \[0,1\].*backend is cpu"):
        otgpu.sinkhorn(x, y, eps=0.2, backend="cpu", devices=[0, 1])
    # The derived outputs that solve on the fly take the option too.
    with pytest.raises(otgpu.InvalidArgument, match=r"devices: \[0\]"):
        otgpu.barycentric_map(x, y, eps=0.2, backend="cpu", devices=[0])


def test_devices_values_are_checked(rng):
    x, y = clouds(rng)
    with pytest.raises(TypeError, match="option devices must be a list"):
        otgpu.sinkhorn(x, y, eps=0.2, devices=0)
    with pytest.raises(TypeError, match=r"devices\[1\]"):
        otgpu.sinkhorn(x, y, eps=0.2, devices=[0, "1"])
    with pytest.raises(otgpu.InvalidArgument, match=r"devices\[1\] is -2"):
        otgpu.sinkhorn(x, y, eps=0.2, devices=(0, -2))
    assert otgpu.sinkhorn_defaults()["devices"] is None
    # None or [] is one device: the plain solve.
    r = otgpu.sinkhorn(x, y, eps=0.2, backend="cpu", devices=None)
    assert r.converged
    assert otgpu.sinkhorn(x, y, eps=0.2, backend="cpu", devices=[]).ot_eps == r.ot_eps


def test_devices_without_a_usable_device_is_device_unavailable(rng):
    if otgpu.cuda_available():
        pytest.skip("a CUDA device is usable here")
    x, y = clouds(rng)
    with pytest.raises(otgpu.DeviceUnavailable, match=r"devices\[0\] is 0"):
        otgpu.sinkhorn(x, y, eps=0.2, devices=[0, 0])


@pytest.mark.gpu
def test_logical_shards_match_the_plain_solve(rng):
    # Host arrays only; m > 512 keeps the plain solve off its one-block kernel, n = 701
    # splits unevenly over the shards.
    x, y = clouds(rng, n=701, m=613, d=3)
    opts = dict(eps=0.05, eps_relative=True, tol=1e-4, backend="cuda")
    ref = otgpu.sinkhorn(x, y, **opts)
    r = otgpu.sinkhorn(x, y, devices=[0, 0], **opts)
    assert r.converged and r.iterations == ref.iterations
    scale = max(np.abs(ref.f).max(), np.abs(ref.g).max(), ref.eps)
    np.testing.assert_allclose(r.f, ref.f, rtol=0, atol=2e-4 * scale)
    np.testing.assert_allclose(r.g, ref.g, rtol=0, atol=2e-4 * scale)
    assert r.ot_eps == pytest.approx(ref.ot_eps, rel=1e-4, abs=1e-4 * scale)
    # Derived outputs from each shard's kept state, in row order.
    m_ref = otgpu.barycentric_map(x, y, ref)
    m = otgpu.barycentric_map(x, y, r)
    np.testing.assert_allclose(m, m_ref, rtol=0, atol=1e-3 * (1 + np.abs(m_ref).max()))
    same = np.mean(otgpu.sample_partners(x, y, r, seed=5) ==
                   otgpu.sample_partners(x, y, ref, seed=5))
    assert same >= 0.98
