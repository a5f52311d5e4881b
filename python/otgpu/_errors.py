"""The library's typed errors (core/include/otgpu/error.h) as Python exceptions.

Every class derives from :class:`Error` and from the built-in exception a Python
user would catch for that fault, so ``except ValueError`` works as well as
``except otgpu.ShapeError``. The message is the library's one line, which names the
argument and the offending value.

=====================  ==========================================================
C++ (otgpu::)          Python (otgpu.)
=====================  ==========================================================
Error                  Error(Exception)
InvalidArgument        InvalidArgument(Error, ValueError)
ShapeError             ShapeError(InvalidArgument)
NonFiniteInput         NonFiniteInput(InvalidArgument)
DTypeError             DTypeError(InvalidArgument, TypeError)
Infeasible             Infeasible(InvalidArgument)
DeviceUnavailable      DeviceUnavailable(Error, RuntimeError)
CudaError              CudaError(Error, RuntimeError), ``.code``: the CUDA status
OutOfMemory            OutOfMemory(Error, MemoryError)
IoError                IoError(Error, OSError)
=====================  ==========================================================
"""


class Error(Exception):
    """Base of every error libotgpu raises."""


class InvalidArgument(Error, ValueError):
    """A caller-supplied value is wrong (size, eps, weights, option...)."""


class ShapeError(InvalidArgument):
    """Shapes or strides are inconsistent, or an array cannot be read as it is."""


class NonFiniteInput(InvalidArgument):
    """Input data holds NaN or infinity, or negative weights."""


class DTypeError(InvalidArgument, TypeError):
    """Element type not supported (float32 and float64 are)."""


class Infeasible(InvalidArgument):
    """The allowed pairs of an assignment problem admit no matching of min(n, m) pairs
    (too many +inf costs)."""


class DeviceUnavailable(Error, RuntimeError):
    """The requested backend or device cannot be used (no CUDA build, no GPU, bad id)."""


class CudaError(Error, RuntimeError):
    """A CUDA runtime or library call failed; ``code`` is its status."""

    def __init__(self, message, code=0):
        super().__init__(message)
        self.code = code


class OutOfMemory(Error, MemoryError):
    """Device or host memory could not be obtained."""


class IoError(Error, OSError):
    """A file could not be read or written, or is malformed."""


__all__ = ["Error", "InvalidArgument", "ShapeError", "NonFiniteInput", "DTypeError",
           "Infeasible",
           "DeviceUnavailable", "CudaError", "OutOfMemory", "IoError"]
