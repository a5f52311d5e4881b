// Device-side gathers of caller tensors into contiguous arrays, shared by the sliced
// and Gaussian drivers. The source is either the caller's device tensor or the raw
// bytes of a host tensor copied as is to the device (same strides): one code path
// for both. Plain C++ header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace otgpu::kernels {

/// A strided f32 / f64 tensor of rank <= 3 in device memory, as [dim0, dim1, dim2]
/// with element strides >= 0 (a lower rank is padded in front with size 1).
struct Strided3 {
  const void* data = nullptr;
  bool is_f64 = false;
  std::int64_t dim[3] = {1, 1, 1};
  std::int64_t stride[3] = {0, 0, 0};
};

/// dst[(i0 * dim1 + i1) * dim2 + i2] = src(i0, i1, i2), converted to float.
void gather(const Strided3& src, float* dst, cudaStream_t stream);
/// The same, converted to double.
void gather(const Strided3& src, double* dst, cudaStream_t stream);
/// Square blocks (dim1 == dim2 = d) in double, symmetrized: dst(b, i, j) =
/// (src(b, i, j) + src(b, j, i)) / 2 off the diagonal, src(b, i, i) on it: the
/// symmetric part of each covariance, exactly as the host validation forms it.
void gather_symmetrized(const Strided3& src, double* dst, cudaStream_t stream);

}  // namespace otgpu::kernels
