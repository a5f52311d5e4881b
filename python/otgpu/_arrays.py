"""Arrays in and out, and the stream argument.

Inputs go to the extension as they are: it imports them through DLPack (or the buffer
protocol) without copying. Outputs of the library are host arrays (NumPy, owning the
library's result); :func:`converter` turns them into the caller's kind of array on
the caller's device (torch, JAX, CuPy), or leaves them as NumPy. (The stream-ordered
device path for torch and CuPy CUDA arrays, which never goes through the host, is
otgpu/_device.py.)
"""

import sys

import numpy as np

_STREAM_HELP = ("expected None, an int handle (a cudaStream_t value; 0 is the legacy "
                "default stream) or a stream object with .cuda_stream or .ptr "
                "(torch.cuda.Stream, cupy.cuda.Stream)")


def framework(obj):
    """'torch', 'jax', 'cupy', or None (NumPy and anything else) for an input array."""
    if obj is None or type(obj) is np.ndarray:
        return None
    mod = type(obj).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("jax"):
        return "jax"
    if mod.startswith("cupy"):
        return "cupy"
    return None


def prepare(obj):
    """The object handed to the extension: torch tensors that require grad are
    detached (their DLPack export refuses otherwise); the storage is the same."""
    if obj is None or type(obj) is np.ndarray:
        return obj
    if getattr(obj, "requires_grad", False) and framework(obj) == "torch":
        return obj.detach()
    return obj


def to_host(obj):
    """f_init/g_init, which the library takes in host memory: framework arrays are
    copied to the host (a device-to-host copy for CUDA tensors)."""
    fw = framework(obj)
    if fw == "torch":
        return obj.detach().cpu().numpy()
    if fw == "cupy":
        return obj.get()
    if fw == "jax":
        return np.asarray(obj)
    return obj  # NumPy, lists, other DLPack objects: the extension reads them


def resolve_stream(stream, like):
    """The stream handle passed to the extension (None: no stream asked for).

    Without `stream`, a torch CUDA tensor runs on torch's current stream of its device
    and a CuPy array on CuPy's current stream (both the legacy default stream unless
    the caller changed them); anything else uses no stream (the library's per-thread
    context on the legacy default stream)."""
    if stream is None:
        fw = framework(like)
        if fw == "torch":
            if like.is_cuda:
                torch = sys.modules["torch"]
                return torch.cuda.current_stream(like.device).cuda_stream
            return None
        if fw == "cupy":
            cupy = sys.modules["cupy"]
            return cupy.cuda.get_current_stream().ptr
        return None
    if isinstance(stream, bool):
        raise TypeError(f"stream: {_STREAM_HELP}; got bool")
    if isinstance(stream, int):
        if stream < 0:
            raise ValueError(f"stream: a stream handle is a non-negative int, got {stream}")
        return stream
    for attr in ("cuda_stream", "ptr"):
        handle = getattr(stream, attr, None)
        if handle is not None:
            if isinstance(handle, int) and not isinstance(handle, bool):
                return handle
            raise TypeError(f"stream: {type(stream).__name__}.{attr} is not an int handle")
    raise TypeError(f"stream: {_STREAM_HELP}; got {type(stream).__name__}")


def _jax_device(like):
    dev = getattr(like, "device", None)
    if callable(dev):
        dev = dev()
    if dev is None:
        dev = next(iter(like.devices()))
    return dev


def converter(like):
    """A function mapping a host NumPy result to the kind of array of `like`, on its
    device (identity for NumPy inputs)."""
    fw = framework(like)
    if fw is None:
        return _identity
    if fw == "torch":
        torch = sys.modules["torch"]
        device = like.device

        def to_torch(arr):
            t = torch.from_numpy(arr)
            return t if device.type == "cpu" else t.to(device)
        return to_torch
    if fw == "cupy":
        cupy = sys.modules["cupy"]
        dev_id = like.device.id

        def to_cupy(arr):
            with cupy.cuda.Device(dev_id):
                return cupy.asarray(arr)
        return to_cupy
    jax = sys.modules["jax"]
    device = _jax_device(like)
    return lambda arr: jax.device_put(arr, device)


def _identity(arr):
    return arr
