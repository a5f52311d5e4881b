"""The stream-ordered device path: outputs allocated by the caller's framework.

For torch CUDA tensors and CuPy arrays the package does not go through host memory:
the outputs (potentials, report arrays, maps, gradients, partners, matchings, pairs)
are allocated here with the caller's framework, on the inputs' device and on the
stream the call runs on, and their device addresses are handed to the extension's
``_*_async`` functions, which enqueue the library's ``*_async`` calls
(otgpu/device.h, assignment.h, coupling.h) on the cached GpuContext of (device,
stream) and return at once. Nothing here waits for the device.

The decisions (is a call eligible, which shapes, which dtypes) are pure Python on the
objects' attributes, so that they are tested with stand-in objects on machines
without torch or CuPy.
"""

import contextlib
import sys

from ._arrays import framework

# Element types of the outputs, by the names both frameworks use.
FLOAT32, FLOAT64, INT32, INT64 = "float32", "float64", "int32", "int64"


def device_framework(obj):
    """'torch' for a torch CUDA tensor, 'cupy' for a CuPy array, else None (host
    tensors, NumPy, JAX, other DLPack objects: JAX arrays are immutable, so their
    results are new arrays made from host copies, never written in place)."""
    fw = framework(obj)
    if fw == "torch":
        return "torch" if getattr(obj, "is_cuda", False) else None
    if fw == "cupy":
        return "cupy"
    return None


def async_framework(arrays, native):
    """The framework of the stream-ordered path for this call's arrays, or None when
    the call takes the synchronous path: every array given (None entries are absent)
    must be a CUDA array of one framework (torch or CuPy), and the extension must have
    been built with CUDA (else the synchronous path raises DeviceUnavailable)."""
    if not native.built_with_cuda:
        return None
    kinds = {device_framework(a) for a in arrays if a is not None}
    if len(kinds) != 1:
        return None
    (fw,) = kinds
    return fw


def device_index(obj, fw):
    """CUDA ordinal of a device array."""
    if fw == "torch":
        return obj.device.index if obj.device.index is not None else 0
    return obj.device.id


class Allocator:
    """Allocates outputs with the framework of ``like`` on its device, ordered on the
    stream ``handle`` (the stream the library's work is queued on): torch's caching
    allocator and CuPy's memory pool both reuse a block freely only on the stream it
    was allocated on, so the outputs are allocated on that stream."""

    def __init__(self, like, fw, handle):
        self.fw = fw
        self.handle = handle
        self.module = sys.modules[fw]
        self.index = device_index(like, fw)
        self.device = like.device

    @contextlib.contextmanager
    def on_stream(self):
        """The framework's current device and stream set to the call's for the
        allocations and copies made in the block (a no-op when they already are)."""
        if self.fw == "torch":
            torch = self.module
            current = torch.cuda.current_stream(self.device)
            if current.cuda_stream == self.handle:
                yield
                return
            if self.handle == 0:
                stream = torch.cuda.default_stream(self.device)
            else:
                stream = torch.cuda.ExternalStream(self.handle, device=self.device)
            with torch.cuda.stream(stream):
                yield
            return
        cupy = self.module
        with cupy.cuda.Device(self.index):
            if cupy.cuda.get_current_stream().ptr == self.handle:
                yield
                return
            with cupy.cuda.ExternalStream(self.handle):
                yield

    def empty(self, shape, dtype):
        shape = tuple(int(s) for s in shape)
        if self.fw == "torch":
            torch = self.module
            return torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
        return self.module.empty(shape, dtype=dtype)

    def fill_from(self, out, values):
        """Copies ``values`` (any array the framework accepts; host or device) into the
        flat buffer ``out``, in the call's stream order."""
        if self.fw == "torch":
            torch = self.module
            src = torch.as_tensor(values, device=self.device)
            out.view(-1).copy_(src.reshape(-1))
            return
        cupy = self.module
        out.ravel()[...] = cupy.asarray(values).ravel()


def data_ptr(t, fw):
    """Device address of a framework array (the extension takes it as an int)."""
    return t.data_ptr() if fw == "torch" else t.data.ptr


def batch_sizes(x, y, cost):
    """(B, n, m, batched) of a Sinkhorn problem from the shapes: point clouds x [B, n, d]
    or [n, d] and y [B, m, d] or [m, d], or a cost [B, n, m] or [n, m]."""
    if cost is not None:
        s = tuple(cost.shape)
        if len(s) == 3:
            return s[0], s[1], s[2], True
        if len(s) == 2:
            return 1, s[0], s[1], False
        return None
    if x is None or y is None:
        return None  # the library names the missing argument
    sx, sy = tuple(x.shape), tuple(y.shape)
    if len(sx) == 3 and len(sy) in (2, 3):
        return sx[0], sx[1], sy[-2], True
    if len(sx) == 2 and len(sy) == 2:
        return 1, sx[0], sy[0], False
    return None  # let the library name the shape error


def host_read(t, fw):
    """A framework array as NumPy (waits for the array's producer: a host sync)."""
    if fw == "torch":
        return t.detach().cpu().numpy()
    return t.get()
