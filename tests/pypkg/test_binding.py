"""The binding itself: DLPack import, strides, dtypes, typed errors, the stream
argument, reference counts and memory over many calls, the GIL, progress callbacks,
and agreement with the otgpu command."""

import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

import otgpu


class DLPackOnly:
    """A pure-Python array exposing only the DLPack protocol (no buffer protocol, no
    __array__), wrapping a NumPy array: proves the import goes through __dlpack__."""

    def __init__(self, arr):
        self._arr = arr
        self.exports = 0

    def __dlpack__(self, **kwargs):
        self.exports += 1
        return self._arr.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._arr.__dlpack_device__()


def clouds(rng, n=20, m=24, d=3):
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + 0.3


def test_dlpack_protocol_object_is_read_in_place(rng):
    x, y = clouds(rng)
    wx, wy = DLPackOnly(x), DLPackOnly(y)
    r = otgpu.sinkhorn(wx, wy, eps=0.2)
    assert wx.exports >= 1 and wy.exports >= 1
    ref = otgpu.sinkhorn(x, y, eps=0.2)
    np.testing.assert_array_equal(r.numpy()[0], ref.numpy()[0])
    # Outputs of a non-framework input are NumPy arrays.
    assert type(r.f) is np.ndarray
    m = otgpu.barycentric_map(DLPackOnly(x), DLPackOnly(y), r)
    np.testing.assert_array_equal(m, otgpu.barycentric_map(x, y, ref))


def test_outputs_round_trip_through_dlpack(rng):
    x, y = clouds(rng)
    r = otgpu.sinkhorn(x, y, eps=0.2)
    f = r.f
    back = np.from_dlpack(f)
    assert back.ctypes.data == f.ctypes.data  # the output owns its memory, shared as is
    again = otgpu.sinkhorn(x, y, eps=0.2, f_init=DLPackOnly(r.f), g_init=r.g)
    assert again.converged and again.iterations <= 10


@pytest.mark.parametrize("view", ["fortran", "row_step", "column_step", "broadcast",
                                  "batched_transpose"])
def test_strided_views_are_read_as_they_are(rng, view):
    x, y = clouds(rng)
    if view == "fortran":
        v = np.asfortranarray(x)
    elif view == "row_step":
        big = np.repeat(x, 2, axis=0)
        v = big[::2]
    elif view == "column_step":
        big = np.zeros((x.shape[0], 2 * x.shape[1]))
        big[:, ::2] = x
        v = big[:, ::2]
    elif view == "broadcast":
        x = np.broadcast_to(x[:1], x.shape).copy()
        v = np.broadcast_to(x[:1], x.shape)  # stride 0
    else:
        x3 = np.stack([x, x + 1])
        v = np.ascontiguousarray(x3.transpose(0, 2, 1)).transpose(0, 2, 1)
        x = x3
        y = np.stack([y, y])
    assert not v.flags.c_contiguous or view == "broadcast"
    np.testing.assert_array_equal(otgpu.sinkhorn(v, y, eps=0.2).numpy()[0],
                                  otgpu.sinkhorn(np.ascontiguousarray(v), y,
                                                 eps=0.2).numpy()[0])
    np.testing.assert_array_equal(otgpu.sinkhorn(DLPackOnly(v), y, eps=0.2).numpy()[0],
                                  otgpu.sinkhorn(x, y, eps=0.2).numpy()[0])


def test_unreadable_layouts_are_refused_with_value_errors(rng):
    x, y = clouds(rng)
    with pytest.raises(otgpu.ShapeError, match=r"x: stride -\d+ in dimension 0 is negative"):
        otgpu.sinkhorn(x[::-1], y)
    with pytest.raises(ValueError, match="y: stride"):
        otgpu.sinkhorn(x, y[:, ::-1])
    packed = np.zeros(10, dtype=[("v", "f8"), ("tag", "i1")])["v"]  # 9-byte stride
    with pytest.raises(otgpu.ShapeError, match="x: .*element-strided"):
        otgpu.wasserstein_1d(packed, np.ones(4))
    with pytest.raises(otgpu.ShapeError, match="x: empty array"):
        otgpu.sinkhorn(np.zeros((0, 3)), y)
    with pytest.raises(otgpu.ShapeError, match="rank 4 not supported"):
        otgpu.sinkhorn(np.zeros((1, 1, 2, 3)), y)


def test_dtypes_and_array_likes(rng):
    x, y = clouds(rng)
    with pytest.raises(otgpu.DTypeError, match="x: dtype int64 not supported"):
        otgpu.sinkhorn(x.astype(np.int64), y)
    with pytest.raises(TypeError, match="b: dtype float16"):
        otgpu.sinkhorn(x, y, b=np.full(24, 1 / 24, dtype=np.float16))
    r = otgpu.sinkhorn(x, y, eps=0.2)
    # The gradient in y binds the problem seen from y; messages keep the caller's names.
    with pytest.raises(otgpu.DTypeError, match="^y: dtype int64"):
        otgpu.gradient(x, y.astype(np.int64), r, wrt="y")
    lists = otgpu.sinkhorn(x.tolist(), y.tolist(), eps=0.2)
    assert lists.ot_eps == otgpu.sinkhorn(x, y, eps=0.2).ot_eps
    ro = x.copy()
    ro.flags.writeable = False
    assert otgpu.sinkhorn(ro, y, eps=0.2).ot_eps == lists.ot_eps


def test_every_typed_error_maps_to_its_python_class(rng):
    x, y = clouds(rng)
    cases = [
        (dict(eps=-1.0), otgpu.InvalidArgument, ValueError, "eps"),
        (dict(max_iter=0), otgpu.InvalidArgument, ValueError, "max_iter"),
        (dict(acceleration="fast"), otgpu.InvalidArgument, ValueError, "acceleration"),
        (dict(backend="tpu"), otgpu.InvalidArgument, ValueError, "backend"),
    ]
    for opts, cls, builtin, word in cases:
        with pytest.raises(cls, match=word) as info:
            otgpu.sinkhorn(x, y, **opts)
        assert isinstance(info.value, builtin) and isinstance(info.value, otgpu.Error)
        assert "\n" not in str(info.value)
        assert not isinstance(info.value, (otgpu.ShapeError, otgpu.NonFiniteInput))
    with pytest.raises(otgpu.ShapeError, match="y: shape") as info:
        otgpu.sinkhorn(x, y[:, :2])
    assert isinstance(info.value, ValueError)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(otgpu.NonFiniteInput, match=r"x: element \[3, 1\] is nan") as info:
        otgpu.sinkhorn(bad, y)
    assert isinstance(info.value, ValueError)
    with pytest.raises(otgpu.NonFiniteInput, match="a"):
        otgpu.sinkhorn(x, y, a=-np.ones(20))
    with pytest.raises(otgpu.DTypeError) as info:
        otgpu.sinkhorn(x.astype(np.int32), y)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    # Errors no CPU input can provoke go through the same translator.
    for kind, cls, builtin in [("Error", otgpu.Error, Exception),
                               ("InvalidArgument", otgpu.InvalidArgument, ValueError),
                               ("ShapeError", otgpu.ShapeError, ValueError),
                               ("DTypeError", otgpu.DTypeError, TypeError),
                               ("NonFiniteInput", otgpu.NonFiniteInput, ValueError),
                               ("Infeasible", otgpu.Infeasible, ValueError),
                               ("DeviceUnavailable", otgpu.DeviceUnavailable, RuntimeError),
                               ("CudaError", otgpu.CudaError, RuntimeError),
                               ("OutOfMemory", otgpu.OutOfMemory, MemoryError),
                               ("IoError", otgpu.IoError, OSError)]:
        with pytest.raises(cls, match=f"^{kind} message$") as info:
            otgpu._otgpu._throw_for_test(kind, f"{kind} message")
        assert type(info.value) is cls and isinstance(info.value, builtin)
    with pytest.raises(otgpu.CudaError) as info:
        otgpu._otgpu._throw_for_test("CudaError", "m")
    assert info.value.code == 2


@pytest.mark.skipif(otgpu.cuda_available(), reason="a usable CUDA device is present")
def test_device_unavailable_without_a_gpu(rng):
    x, y = clouds(rng)
    for fn in (lambda: otgpu.sinkhorn(x, y, backend="cuda"),
               lambda: otgpu.sliced_wasserstein(x, y, backend="cuda"),
               lambda: otgpu.wasserstein_1d(x[:, 0], y[:, 0], backend="cuda"),
               lambda: otgpu.gaussian_ot(np.zeros(2), np.eye(2), np.ones(2), np.eye(2),
                                         backend="cuda")):
        with pytest.raises(otgpu.DeviceUnavailable) as info:
            fn()
        assert isinstance(info.value, RuntimeError) and "\n" not in str(info.value)


def test_option_types_are_checked(rng):
    x, y = clouds(rng)
    with pytest.raises(TypeError, match="option eps must be a number, got str"):
        otgpu.sinkhorn(x, y, eps="0.1")
    with pytest.raises(TypeError, match="option max_iter must be an int, got float"):
        otgpu.sinkhorn(x, y, max_iter=10.0)
    with pytest.raises(TypeError, match="option eps_relative must be a bool"):
        otgpu.sinkhorn(x, y, eps_relative=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'epsilon'"):
        otgpu.sinkhorn(x, y, epsilon=0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tol'"):
        otgpu.sliced_wasserstein(x, y, tol=1.0)
    assert otgpu.sinkhorn(x, y, eps=np.float32(0.2), max_iter=np.int64(50)).eps == \
        pytest.approx(0.2)
    defaults = otgpu.sinkhorn_defaults()
    assert defaults["eps"] == 0.01 and defaults["max_iter"] == 100000 and defaults["tol"] is None


class FakeTorchStream:
    def __init__(self, handle):
        self.cuda_stream = handle


class FakeCupyStream:
    def __init__(self, handle):
        self.ptr = handle


def test_stream_argument_is_validated(rng):
    x, y = clouds(rng)
    for bad in ("default", 1.5, True, [0], object(), FakeTorchStream("s"), FakeCupyStream(None)):
        with pytest.raises(TypeError, match="stream"):
            otgpu.sinkhorn(x, y, eps=0.2, stream=bad)
    with pytest.raises(ValueError, match="stream"):
        otgpu.sinkhorn(x, y, eps=0.2, stream=-1)
    with pytest.raises(TypeError, match="stream"):
        otgpu.sliced_wasserstein(x, y, stream="0")
    with pytest.raises(TypeError, match="stream"):
        otgpu.wasserstein_1d(x[:, 0], y[:, 0], stream=2.0)
    with pytest.raises(TypeError, match="stream"):
        otgpu.gaussian_ot(np.zeros(2), np.eye(2), np.ones(2), np.eye(2), stream="x")
    with pytest.raises(TypeError, match="stream"):
        otgpu._otgpu.sinkhorn(x, y, None, None, None, "0")
    # Valid handles are accepted; host inputs on the CPU backend never touch them.
    ref = otgpu.sinkhorn(x, y, eps=0.2).ot_eps
    for good in (0, 1, 2, FakeTorchStream(0), FakeCupyStream(0)):
        assert otgpu.sinkhorn(x, y, eps=0.2, stream=good, backend="cpu").ot_eps == ref


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_reference_or_memory_growth_over_10000_calls(rng):
    x, y = clouds(rng, 16, 16, 2)
    r0 = otgpu.sinkhorn(x, y, eps=0.2)
    f0, g0 = r0.numpy()

    def calls():
        r = otgpu.sinkhorn(x, y, eps=0.2, f_init=f0, g_init=g0)
        r.f, r.g, r.reports  # noqa: B018 (the outputs are what might leak)
        otgpu.barycentric_map(x, y, r)

    for _ in range(500):
        calls()
    refs = (sys.getrefcount(x), sys.getrefcount(y), sys.getrefcount(f0))
    tracemalloc.start()
    rss0 = _rss_bytes()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(10000):
        calls()
    snap1 = tracemalloc.take_snapshot()
    rss1 = _rss_bytes()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    # A leaked output would be >= 10000 x 768 B (f, g, the map) = 7.7 MB.
    assert growth < 64 * 1024, growth
    assert rss1 - rss0 < 2 * 1024 * 1024, rss1 - rss0
    assert (sys.getrefcount(x), sys.getrefcount(y), sys.getrefcount(f0)) == refs


def test_the_gil_is_released_during_a_solve(rng):
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 2
    window = {}

    def solve():
        window["start"] = time.perf_counter()
        otgpu.sinkhorn(x, y, eps=0.005, tol=1e-9, cpu_threads=1, acceleration="none",
                       max_iter=100, check_every=0)
        window["end"] = time.perf_counter()

    t = threading.Thread(target=solve)
    ticks = []
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    span = window["end"] - window["start"]
    inside = [s for s in ticks if window["start"] + 0.1 * span < s < window["end"] - 0.1 * span]
    # With the GIL held for the whole solve, no tick could fall inside it.
    assert span > 0.02 and len(inside) >= 3, (span, len(inside))


def test_progress_callback_and_cancellation(rng):
    x, y = rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) + 1
    seen = []
    r = otgpu.sinkhorn(x, y, eps=0.01, progress=lambda p: seen.append(p))
    assert r.converged and seen and set(seen[0]) == {"problem", "iteration", "eps", "residual",
                                                     "elapsed_s", "active"}
    stop = otgpu.sinkhorn(x, y, eps=0.01, progress=lambda p: False)
    assert stop.cancelled and not stop.converged

    def boom(p):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        otgpu.sinkhorn(x, y, eps=0.01, progress=boom)
    with pytest.raises(TypeError, match="progress must be callable"):
        otgpu.sinkhorn(x, y, progress=3)


def otgpu_cli():
    path = os.environ.get("OTGPU_BIN")
    if path and os.access(path, os.X_OK):
        return path
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for build in ("build/ci", "build/release", "build/cpu"):
        candidate = os.path.join(root, build, "otgpu")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("otgpu")


@pytest.mark.skipif(otgpu_cli() is None, reason="the otgpu command is not built")
def test_same_potentials_as_the_command(rng, tmp_path):
    x, y = rng.normal(size=(3, 30, 2)), rng.normal(size=(3, 40, 2)) + 1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    subprocess.run([otgpu_cli(), "sinkhorn", "--x", tmp_path / "x.npy", "--y",
                    tmp_path / "y.npy", "--eps", "0.05", "--eps-relative", "--backend", "cpu",
                    "--f-out", tmp_path / "f.npy", "--g-out", tmp_path / "g.npy",
                    "--map-out", tmp_path / "t.npy"], check=True, capture_output=True,
                   timeout=120)
    r = otgpu.sinkhorn(x, y, eps=0.05, eps_relative=True, backend="cpu")
    f, g = r.numpy()
    # The same CPU code: bitwise identical for every thread count (docs/design.md).
    np.testing.assert_array_equal(f, np.load(tmp_path / "f.npy"))
    np.testing.assert_array_equal(g, np.load(tmp_path / "g.npy"))
    np.testing.assert_array_equal(otgpu.barycentric_map(x, y, r), np.load(tmp_path / "t.npy"))


def test_precision_option_and_report(rng):
    # The tensor-core arithmetic option (SinkhornOptions::precision): the CPU ignores it
    # and reports fp64; a bad name is the library's InvalidArgument naming the argument.
    x, y = clouds(rng)
    r = otgpu.sinkhorn(x, y, eps=0.2, backend="cpu", precision="bf16")
    assert r.precision == "fp64" and r.tensor_cores is False
    with pytest.raises(otgpu.InvalidArgument, match="precision: unknown precision 'fp16'"):
        otgpu.sinkhorn(x, y, eps=0.2, backend="cpu", precision="fp16")
    with pytest.raises(TypeError, match="option precision must be a str"):
        otgpu.sinkhorn(x, y, eps=0.2, backend="cpu", precision=32)
    assert otgpu.sinkhorn_defaults()["precision"] == "fp32"
