// The CUDA Gaussian OT path as seen by the dispatch layer. Implemented in
// host/src/cuda/gaussian_cuda.cu when the build has CUDA, and by
// host/src/gaussian_cuda_stub.cpp otherwise (DeviceUnavailable). Never includes a
// CUDA header.
#pragma once

#include <vector>

#include "gaussian_pairs.h"
#include "otgpu/gaussian.h"

namespace otgpu::cuda_backend {

/// Closed-form Gaussian OT of every validated pair on options.device, in float64
/// (cuSOLVER eigen-decompositions, cuBLAS products). Synchronous: returns host
/// vectors. Fills everything but time_ms.
GaussianOTResult gaussian_ot(const detail::GaussianPairs& pairs, const GaussianOTOptions& options);

/// The elements of a device-memory view (rank 1..3, any strides, f32/f64) as a
/// contiguous C-order float64 host vector, so that the validation can read them.
std::vector<double> download_as_double(const TensorView& view, int device);

}  // namespace otgpu::cuda_backend
