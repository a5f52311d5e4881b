"""The stream-ordered device path's Python logic, on a machine without a GPU.

A stand-in "cupy" (arrays backed by NumPy host memory, streams as plain ints) and a
stand-in extension whose _*_async functions run the real CPU solves and write the
results through the raw addresses they are given (ctypes), as the CUDA library writes
caller-owned device buffers. This pins which calls take the path, the shapes, dtypes
and addresses of the outputs the package allocates, the stream they are allocated and
queued on, warm starts, and that the values reach the caller's arrays; the CUDA side
itself is covered by tests/pypkg/test_gpu.py on a GPU machine.
"""

import contextlib
import ctypes
import sys
import types

import numpy as np
import pytest

import otgpu
from otgpu import _api, _device

real = otgpu._otgpu


class FakeArray:
    """A CuPy-like array in host memory: .data.ptr is its address."""

    __module__ = "cupy._stand_in"

    def __init__(self, a, device=0):
        a = np.asarray(a)
        self.a = a
        self.device = types.SimpleNamespace(id=device)
        self.data = types.SimpleNamespace(ptr=a.ctypes.data)

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    ndim = property(lambda self: self.a.ndim)

    def __getitem__(self, idx):
        return FakeArray(self.a[idx, ...] if isinstance(idx, int) else self.a[idx])

    def __setitem__(self, idx, value):
        self.a[idx] = value.a if isinstance(value, FakeArray) else value

    def ravel(self):
        return FakeArray(self.a.reshape(-1))

    def fill(self, v):
        self.a.fill(v)

    def get(self):
        return self.a.copy()

    def __le__(self, other):
        return FakeArray(self.a <= other)

    def __and__(self, other):
        return FakeArray(self.a & other.a)


class FakeCupy(types.ModuleType):
    def __init__(self):
        super().__init__("cupy")
        self.current = 0x5000  # the "current stream" handle
        self.entered = []      # streams made current by the package

        fake = self

        class Stream:
            def __init__(self, ptr):
                self.ptr = ptr

        @contextlib.contextmanager
        def device(i):
            yield

        @contextlib.contextmanager
        def external(ptr):
            fake.entered.append(ptr)
            old, fake.current = fake.current, ptr
            try:
                yield
            finally:
                fake.current = old

        self.cuda = types.SimpleNamespace(Device=device, ExternalStream=external,
                                          get_current_stream=lambda: Stream(fake.current))

    def empty(self, shape, dtype):
        return FakeArray(np.full(shape, -7, dtype=dtype))  # garbage the solve overwrites

    def asarray(self, v, dtype=None):
        return v if isinstance(v, FakeArray) else FakeArray(np.asarray(v, dtype=dtype))

    def isfinite(self, v):
        return FakeArray(np.isfinite(v.a))


def host(v):
    return v.a if isinstance(v, FakeArray) else v


def write(ptr, values, dtype):
    src = np.ascontiguousarray(values, dtype=dtype)
    ctypes.memmove(ptr, src.ctypes.data, src.nbytes)


def read(ptr, count, dtype):
    return np.ctypeslib.as_array(
        (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(ptr)).view(dtype)


class FakeNative:
    """The extension with CUDA: the async entry points run the real CPU solves."""

    built_with_cuda = True

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):  # everything else: the real extension
        return getattr(real, name)

    def sinkhorn(self, *args, **kw):
        if any(isinstance(v, FakeArray) for v in args):
            raise LookupError("synchronous path taken")
        return real.sinkhorn(*args, **kw)  # the host references of the tests

    def _solve(self, x, y, cost, a, b, options, f0=None, g0=None):
        opts = dict(options, backend="cpu")
        if f0 is not None:
            opts.update(f_init=f0, g_init=g0)
        return real.sinkhorn(host(x), host(y), host(cost), host(a), host(b), None, **opts)

    def _sinkhorn_async(self, x, y, cost, a, b, stream, ptrs, warm_start, **options):
        self.calls.append(("sinkhorn", stream, list(ptrs), warm_start, dict(options)))
        B, n, m = self._sizes(x, y, cost)
        f0 = g0 = None
        if warm_start:
            f0, g0 = read(ptrs[0], B * n, np.float32), read(ptrs[1], B * m, np.float32)
        r = self._solve(x, y, cost, a, b, options, f0, g0)
        write(ptrs[0], r.f(True), np.float32)
        write(ptrs[1], r.g(True), np.float32)
        for p, name in zip(ptrs[2:6], ("ot_eps", "transport_cost", "marginal_error",
                                        "residual")):
            write(p, r.column(name), np.float64)
        write(ptrs[6], r.column("iterations"), np.int32)
        return 0

    @staticmethod
    def _sizes(x, y, cost):
        if cost is not None:
            s = cost.shape
            return (s[0], s[1], s[2]) if len(s) == 3 else (1, s[0], s[1])
        return (x.shape[0] if len(x.shape) == 3 else 1), x.shape[-2], y.shape[-2]

    def _derived_async(self, what, x, y, cost, a, b, stream, f_ptr, g_ptr, seed, out_ptr,
                       **options):
        self.calls.append((what, stream, f_ptr, g_ptr, out_ptr))
        r = self._solve(x, y, cost, a, b, options)
        kind = options.get("cost_kind", "sqeuclidean")
        if what == "map":
            out = real.barycentric_map(host(x), host(y), host(a), host(b), r, None, kind)
        elif what == "partners":
            out = real.sample_partners(host(x), host(y), host(cost), host(a), host(b), r,
                                       seed, None, kind if cost is None else "matrix")
        else:
            out = real.gradient(host(x), host(y), host(a), host(b), r, None, kind, what[-1])
        write(out_ptr, out, np.int64 if what == "partners" else np.float32)

    def _assignment_async(self, x, y, cost, stream, ptrs, **options):
        self.calls.append(("assignment", stream, list(ptrs)))
        d = real.assignment(host(x), host(y), host(cost), None, **options)
        write(ptrs[0], d["row_to_col"], np.int64)
        write(ptrs[1], d["col_to_row"], np.int64)
        write(ptrs[2], [r["cost"] for r in d["reports"]], np.float64)
        write(ptrs[3], [r["gap"] for r in d["reports"]], np.float64)
        return 0

    def _couple_async(self, x0, x1, stream, i_ptr, j_ptr, **options):
        self.calls.append(("couple", stream, i_ptr, j_ptr))
        d = real.couple(host(x0), host(x1), None, **options)
        write(i_ptr, d["i"], np.int64)
        write(j_ptr, d["j"], np.int64)

    def _context_synchronize(self, device, stream):
        self.calls.append(("synchronize", device, stream))


@pytest.fixture
def fake(monkeypatch):
    cupy, native = FakeCupy(), FakeNative()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(_api, "_native", native)
    return types.SimpleNamespace(cupy=cupy, native=native)


def clouds(rng, *lead, n=30, m=40, d=2):
    return rng.normal(size=(*lead, n, d)), rng.normal(size=(*lead, m, d)) + 0.5


def test_eligibility(fake):
    x = FakeArray(np.zeros((3, 2)))
    torch_cuda = type("Tensor", (), {"__module__": "torch", "is_cuda": True})()
    torch_cpu = type("Tensor", (), {"__module__": "torch", "is_cuda": False})()
    jax = type("ArrayImpl", (), {"__module__": "jaxlib.xla_extension"})()
    assert _device.device_framework(x) == "cupy"
    assert _device.device_framework(torch_cuda) == "torch"
    assert _device.device_framework(torch_cpu) is None
    assert _device.device_framework(jax) is None  # immutable: the copy path
    assert _device.device_framework(np.zeros(3)) is None
    assert _device.async_framework((x, None, x), fake.native) == "cupy"
    assert _device.async_framework((x, np.zeros(3)), fake.native) is None  # host weights
    assert _device.async_framework((x, torch_cuda), fake.native) is None   # two frameworks
    assert _device.async_framework((torch_cuda,), fake.native) == "torch"
    assert _device.async_framework((x,), types.SimpleNamespace(built_with_cuda=False)) is None
    assert _device.batch_sizes(np.zeros((4, 5, 2)), np.zeros((4, 6, 2)), None) == (4, 5, 6, True)
    assert _device.batch_sizes(np.zeros((5, 2)), np.zeros((6, 2)), None) == (1, 5, 6, False)
    assert _device.batch_sizes(None, None, np.zeros((5, 6))) == (1, 5, 6, False)
    assert _device.batch_sizes(np.zeros(5), np.zeros(6), None) is None  # the library's error
    assert _device.batch_sizes(None, np.zeros((6, 2)), None) is None


def test_sinkhorn_writes_framework_outputs_on_the_current_stream(fake, rng):
    xh, yh = clouds(rng)
    x, y = FakeArray(xh), FakeArray(yh)
    r = otgpu.sinkhorn(x, y, eps=0.1, tol=1e-9)
    assert isinstance(r, otgpu.DeviceSinkhornResult) and r.asynchronous
    kind, stream, ptrs, warm, opts = fake.native.calls[-1]
    assert kind == "sinkhorn" and stream == fake.cupy.current and not warm
    assert opts == {"eps": 0.1, "tol": 1e-9}
    assert fake.cupy.entered == []  # already the current stream: nothing switched
    fields = [r.f, r.g, r._out["ot_eps"], r._out["transport_cost"], r._out["marginal_error"],
              r._out["residual"], r._out["iterations"]]
    assert ptrs == [t.data.ptr for t in fields]  # the outputs are the caller's arrays
    assert [t.dtype for t in fields] == [np.float32] * 2 + [np.float64] * 4 + [np.int32]
    assert r.f.shape == (30,) and r.g.shape == (40,) and r.ot_eps.shape == ()
    ref = otgpu.sinkhorn(xh, yh, eps=0.1, tol=1e-9, backend="cpu")
    np.testing.assert_array_equal(r.f.get(), ref.f.astype(np.float32))
    np.testing.assert_array_equal(r.g.get(), ref.g.astype(np.float32))
    assert float(r.ot_eps.get()) == ref.ot_eps and int(r.iterations.get()) == ref.iterations
    assert bool(r.converged.get()) and r.tol == 1e-9 and r.eps == 0.1
    rep = r.reports[0]
    assert rep["ot_eps"] == ref.ot_eps and rep["converged"] and rep["iterations"] == ref.iterations
    f64, _ = r.numpy()
    assert f64.dtype == np.float64
    r.synchronize()
    assert fake.native.calls[-1] == ("synchronize", 0, fake.cupy.current)


def test_batched_shapes_explicit_stream_and_relative_eps(fake, rng):
    xh, yh = clouds(rng, 3)
    r = otgpu.sinkhorn(FakeArray(xh), FakeArray(yh), eps=0.1, eps_relative=True, stream=0x77)
    assert fake.native.calls[-1][1] == 0x77
    assert fake.cupy.entered == [0x77]  # outputs allocated on the call's stream
    assert r.f.shape == (3, 30) and r.g.shape == (3, 40) and r.ot_eps.shape == (3,)
    assert r.batch == 3 and r.n == 30 and r.m == 40 and r.eps is None
    assert r.tol == 1e-4  # the CUDA default, used by converged
    ref = otgpu.sinkhorn(xh, yh, eps=0.1, eps_relative=True, backend="cpu")
    np.testing.assert_array_equal(r.ot_eps.get(), ref.ot_eps)


def test_warm_start_fills_the_output_buffers(fake, rng):
    xh, yh = clouds(rng)
    ref = otgpu.sinkhorn(xh, yh, eps=0.1, backend="cpu")
    f0 = FakeArray(ref.f.astype(np.float32))
    r = otgpu.sinkhorn(FakeArray(xh), FakeArray(yh), eps=0.1, f_init=f0, g_init=ref.g)
    _, _, _, warm, opts = fake.native.calls[-1]
    assert warm and "f_init" not in opts and "g_init" not in opts
    # A warm start from converged potentials: one check, few iterations.
    assert int(r.iterations.get()) <= 10
    r2 = otgpu.sinkhorn(FakeArray(xh), FakeArray(yh), eps=0.1, f_init=f0)  # g from zeros
    assert fake.native.calls[-1][3]
    assert r2.f.data.ptr != f0.data.ptr  # the input is never written


def test_calls_that_stay_synchronous(fake, rng):
    xh, yh = clouds(rng)
    x, y = FakeArray(xh), FakeArray(yh)
    r = otgpu.sinkhorn(x, y, progress=None)  # an absent callback keeps the device path
    assert isinstance(r, otgpu.DeviceSinkhornResult)
    fake.native.calls.clear()
    for kwargs in ({"sync": True}, {"progress": lambda s: True}, {"backend": "cpu"},
                   {"a": np.full(30, 1 / 30)}):
        with pytest.raises(LookupError, match="synchronous path"):
            otgpu.sinkhorn(x, y, **kwargs)
    assert fake.native.calls == []


def test_derived_outputs_queue_behind_the_solve(fake, rng):
    xh, yh = clouds(rng, 2)
    x, y = FakeArray(xh), FakeArray(yh)
    r = otgpu.sinkhorn(x, y, eps=0.2, cost_kind="euclidean")
    ref = otgpu.sinkhorn(xh, yh, eps=0.2, cost_kind="euclidean", backend="cpu")
    t = otgpu.barycentric_map(x, y, r)
    what, stream, f_ptr, g_ptr, out_ptr = fake.native.calls[-1]
    assert what == "map" and stream == r.stream and out_ptr == t.data.ptr
    assert (f_ptr, g_ptr) == (r.f.data.ptr, r.g.data.ptr)
    assert t.shape == (2, 30, 2) and t.dtype == np.float32
    np.testing.assert_allclose(t.get(), otgpu.barycentric_map(xh, yh, ref,
                                                              cost_kind="euclidean"),
                               rtol=1e-6)
    gy = otgpu.gradient(x, y, r, wrt="y", stream=0x99)
    assert fake.native.calls[-1][0] == "grad_y" and fake.native.calls[-1][1] == 0x99
    assert gy.shape == (2, 40, 2)
    np.testing.assert_allclose(gy.get(), otgpu.gradient(xh, yh, ref, wrt="y",
                                                        cost_kind="euclidean"), rtol=1e-5)
    gx = otgpu.gradient_x(x, y, r)
    assert fake.native.calls[-1][0] == "grad_x" and gx.shape == (2, 30, 2)
    p = otgpu.sample_partners(x, y, r, seed=4)
    assert p.dtype == np.int64 and p.shape == (2, 30)
    np.testing.assert_array_equal(p.get(), otgpu.sample_partners(xh, yh, ref, seed=4,
                                                                 cost_kind="euclidean"))
    with pytest.raises(otgpu.InvalidArgument, match="DeviceSinkhornResult needs"):
        otgpu.barycentric_map(xh, yh, r)
    with pytest.raises(TypeError, match="sync=True"):
        otgpu.sinkhorn_divergence(x, y, result=r)


def test_assignment_and_couple_async(fake, rng):
    C = rng.random((3, 7, 9))
    r = otgpu.assignment(cost=FakeArray(C))
    assert r.asynchronous and r.u is None and r.dual is None
    _, stream, ptrs = fake.native.calls[-1]
    assert stream == fake.cupy.current
    assert ptrs == [r.row_to_col.data.ptr, r.col_to_row.data.ptr, r.cost.data.ptr,
                    r.gap.data.ptr]
    assert r.row_to_col.shape == (3, 7) and r.col_to_row.shape == (3, 9)
    ref = otgpu.assignment(cost=C)
    np.testing.assert_array_equal(r.row_to_col.get(), ref.row_to_col)
    np.testing.assert_array_equal(r.cost.get(), ref.cost)
    assert [p["cost"] for p in r.reports] == list(ref.cost)
    one = otgpu.assignment(cost=FakeArray(C[0]))
    assert one.row_to_col.shape == (7,) and one.cost.shape == ()
    x0, x1 = rng.normal(size=(2, 16, 2)), rng.normal(size=(2, 16, 2))
    c = otgpu.couple(FakeArray(x0), FakeArray(x1), method="exact")
    assert c.asynchronous and c.reports is None and c.converged is None
    assert c.i.shape == (2, 16) and fake.native.calls[-1][2:] == (c.i.data.ptr, c.j.data.ptr)
    ref = otgpu.couple(x0, x1, method="exact")
    np.testing.assert_array_equal(c.j.get(), ref.j)
    c = otgpu.couple(FakeArray(x0[0]), FakeArray(x1[0]), num_pairs=5, seed=2)
    assert c.i.shape == (5,)
    np.testing.assert_array_equal(c.j.get(), otgpu.couple(x0[0], x1[0], num_pairs=5,
                                                          seed=2).j)


def test_native_async_entry_points_refuse_host_memory(rng):
    # The real extension's signatures (list of addresses, ints as pointers) and its
    # checks, reachable without a GPU: host inputs are refused before anything is queued.
    x, y = clouds(rng)
    msg = "stream-ordered path needs inputs in CUDA device memory"
    with pytest.raises(otgpu.InvalidArgument, match=msg):
        real._sinkhorn_async(x, y, None, None, None, 0, [0] * 7, False, eps=0.1)
    with pytest.raises(otgpu.InvalidArgument, match=msg):
        real._derived_async("map", x, y, None, None, None, 0, 0, 0, 0, 0, eps=0.1)
    with pytest.raises(otgpu.InvalidArgument, match=msg):
        real._assignment_async(x, y, None, 0, [0] * 4)
    with pytest.raises(otgpu.InvalidArgument, match=msg):
        real._couple_async(x, y, 0, 0, 0, method="exact", num_pairs=0)
    with pytest.raises(otgpu.InvalidArgument, match="progress needs the synchronous path"):
        real._sinkhorn_async(x, y, None, None, None, 0, [0] * 7, False, progress=print)
    with pytest.raises(ValueError, match="unknown output"):
        real._derived_async("plan", x, y, None, None, None, 0, 0, 0, 0, 0)
