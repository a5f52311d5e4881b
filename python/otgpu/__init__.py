"""otgpu: GPU-native optimal transport (batched Sinkhorn, derived outputs without the
plan, sliced and 1-D OT, Gaussian OT, exact assignment, minibatch couplings and the
minibatch estimator) over NumPy, torch, JAX and CuPy arrays.

Arrays are read in place through DLPack (host or CUDA memory, float32 or float64, any
non-negative strides); results come back as the caller's kind of array on the
caller's device. Device arrays run on the CUDA stream given as ``stream=`` (an int
handle or an object with ``.cuda_stream`` / ``.ptr``), else on torch's (or CuPy's)
current stream for their tensors, else on the legacy default stream. The GIL is
released while the library runs. For torch CUDA tensors and CuPy arrays, sinkhorn
and its derived outputs, assignment and couple are stream-ordered: the outputs are
allocated by the caller's framework on the device and the call returns without a host
sync (``sync=True`` for the synchronous path). Errors are the library's typed errors
(:class:`Error` and its subclasses, also ValueError/TypeError/RuntimeError).

``otgpu.torch`` (imported on its own, needs torch) has differentiable losses.
See docs/python.md.
"""

from ._errors import (CudaError, DeviceUnavailable, DTypeError, Error, Infeasible,
                      InvalidArgument, IoError, NonFiniteInput, OutOfMemory, ShapeError)
from . import _otgpu
from ._api import (AssignmentResult, CouplingResult, DeviceSinkhornResult, GaussianOTResult,
                   MinibatchResult, SinkhornResult, SlicedResult, assignment,
                   barycentric_map, clear_contexts, couple, coupling_pairs, cuda_available,
                   gaussian_ot, gradient, gradient_x, minibatch_ot, minibatch_rows,
                   monotone_coupling_1d, sample_partners, sinkhorn, sinkhorn_defaults,
                   sinkhorn_divergence, sliced_directions, sliced_wasserstein,
                   wasserstein_1d)
from ._losses import LossTerms, loss_terms

__version__ = _otgpu.__version__
built_with_cuda = _otgpu.built_with_cuda

__all__ = [
    "Error", "InvalidArgument", "ShapeError", "NonFiniteInput", "DTypeError",
    "DeviceUnavailable", "CudaError", "OutOfMemory", "IoError", "Infeasible",
    "sinkhorn", "DeviceSinkhornResult", "SinkhornResult", "sinkhorn_defaults", "sinkhorn_divergence",
    "barycentric_map", "gradient", "gradient_x", "sample_partners",
    "sliced_wasserstein", "SlicedResult", "sliced_directions", "wasserstein_1d",
    "monotone_coupling_1d", "gaussian_ot", "GaussianOTResult",
    "assignment", "AssignmentResult", "couple", "CouplingResult", "coupling_pairs",
    "minibatch_ot", "MinibatchResult", "minibatch_rows",
    "loss_terms", "LossTerms", "cuda_available", "clear_contexts", "built_with_cuda",
]
