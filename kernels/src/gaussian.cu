// Kernels of the CUDA Gaussian OT path (otgpu_kernels/gaussian.h). They touch O(d^2)
// per matrix or O(d) per pair; the O(d^3) work is cuSOLVER's and cuBLAS's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>

#include "grid.cuh"
#include "otgpu/detail/gaussian_math.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/gaussian.h"

namespace otgpu::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kReduceThreads = 128;

unsigned grid_for(std::int64_t total) {
  return detail::grid_stride_blocks(total, kThreads, 65535 * 16);
}

/// tr of each of `count` d x d matrices.
__global__ void __launch_bounds__(kThreads)
    trace_kernel(const double* __restrict__ s, std::int64_t count, std::int64_t d,
                 double* __restrict__ trace) {
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; b < count;
       b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double* a = s + b * d * d;
    double t = 0;
    for (std::int64_t i = 0; i < d; ++i) t += a[i * d + i];
    trace[b] = t;
  }
}

/// out_b = V_b diag(f(w_b)) (column k of the column-major eigenvector matrix V_b
/// scaled by f of its eigenvalue), so that out_b V_b^T = f(the matrix). For the
/// pseudo-inverse the null threshold is kGaussianNullRelTol * trace_b.
__global__ void __launch_bounds__(kThreads)
    scale_columns_kernel(const double* __restrict__ vectors, const double* __restrict__ values,
                         const double* __restrict__ trace, SpectralFn fn, std::int64_t count,
                         std::int64_t d, double* __restrict__ out) {
  const std::int64_t dd = d * d;
  const std::int64_t total = count * dd;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = e / dd;
    const std::int64_t col = (e % dd) / d;
    const double w = values[b * d + col];
    double f = 0;
    if (fn == SpectralFn::sqrt) {
      f = ::otgpu::detail::psd_sqrt(w);
    } else {
      const double tr = trace[b] > 0 ? trace[b] : 0.0;
      f = ::otgpu::detail::pinv_sqrt(w, ::otgpu::detail::kGaussianNullRelTol * tr);
    }
    out[e] = vectors[e] * f;
  }
}

/// ptrs[b] = base + (count == 1 ? 0 : b) * stride: the operand of pair b, where a
/// single block is shared by every pair.
__global__ void __launch_bounds__(kThreads)
    pointer_array_kernel(double* base, std::int64_t count, std::int64_t stride, std::int64_t batch,
                         double** __restrict__ ptrs) {
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; b < batch;
       b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    ptrs[b] = base + (count == 1 ? 0 : b) * stride;
  }
}

/// One block per pair: |m1 - m2|^2 and the eigenvalue sums of M give W2^2, Bures^2
/// and (eps > 0) OT_eps. out is [B, 3] = (w2, bures, entropic).
__global__ void __launch_bounds__(kReduceThreads)
    pair_values_kernel(const double* __restrict__ m1, std::int64_t n_m1,
                       const double* __restrict__ m2, std::int64_t n_m2,
                       const double* __restrict__ tr_s1, std::int64_t n_s1,
                       const double* __restrict__ tr_s2, std::int64_t n_s2,
                       const double* __restrict__ mu, std::int64_t d, double sigma2,
                       double* __restrict__ out) {
  using Reduce = cub::BlockReduce<double, kReduceThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t b = blockIdx.x;
  const double* a = m1 + (n_m1 == 1 ? 0 : b) * d;
  const double* c = m2 + (n_m2 == 1 ? 0 : b) * d;
  const double* w = mu + b * d;
  double mean_sq = 0, sum_sqrt = 0, ent = 0;
  for (std::int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const double diff = a[k] - c[k];
    mean_sq += diff * diff;
    sum_sqrt += ::otgpu::detail::psd_sqrt(w[k]);
    if (sigma2 > 0) ent += ::otgpu::detail::entropic_eigen_term(w[k], sigma2);
  }
  const double tot_mean = Reduce(tmp).Sum(mean_sq);
  __syncthreads();
  const double tot_sqrt = Reduce(tmp).Sum(sum_sqrt);
  __syncthreads();
  const double tot_ent = Reduce(tmp).Sum(ent);
  if (threadIdx.x == 0) {
    const double t1 = tr_s1[n_s1 == 1 ? 0 : b];
    const double t2 = tr_s2[n_s2 == 1 ? 0 : b];
    const double bures = fmax(0.0, t1 + t2 - 2.0 * tot_sqrt);
    out[b * 3 + 0] = tot_mean + bures;
    out[b * 3 + 1] = bures;
    out[b * 3 + 2] = sigma2 > 0 ? tot_mean + t1 + t2 + tot_ent : 0.0;
  }
}

/// a <- (a + a^T) / 2 for each d x d matrix (round-off asymmetry of the products).
__global__ void __launch_bounds__(kThreads)
    symmetrize_kernel(double* __restrict__ a, std::int64_t count, std::int64_t d) {
  const std::int64_t dd = d * d;
  const std::int64_t total = count * dd;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = e / dd;
    const std::int64_t i = (e % dd) / d;
    const std::int64_t j = e % d;
    if (i < j) {
      double* m = a + b * dd;
      const double s = 0.5 * (m[i * d + j] + m[j * d + i]);
      m[i * d + j] = s;
      m[j * d + i] = s;
    }
  }
}

}  // namespace

void gaussian_traces(const double* s, std::int64_t count, std::int64_t d, double* trace,
                     cudaStream_t stream) {
  if (count <= 0) return;
  trace_kernel<<<grid_for(count), kThreads, 0, stream>>>(s, count, d, trace);
  OTGPU_LAUNCH_CHECK();
}

void gaussian_scale_columns(const double* vectors, const double* values, const double* trace,
                            SpectralFn fn, std::int64_t count, std::int64_t d, double* out,
                            cudaStream_t stream) {
  if (count <= 0) return;
  scale_columns_kernel<<<grid_for(count * d * d), kThreads, 0, stream>>>(vectors, values, trace, fn,
                                                                         count, d, out);
  OTGPU_LAUNCH_CHECK();
}

void gaussian_pointer_array(double* base, std::int64_t count, std::int64_t stride,
                            std::int64_t batch, double** ptrs, cudaStream_t stream) {
  if (batch <= 0) return;
  pointer_array_kernel<<<grid_for(batch), kThreads, 0, stream>>>(base, count, stride, batch, ptrs);
  OTGPU_LAUNCH_CHECK();
}

void gaussian_pair_values(const GaussianPairValues& a, cudaStream_t stream) {
  if (a.batch <= 0) return;
  pair_values_kernel<<<static_cast<unsigned>(a.batch), kReduceThreads, 0, stream>>>(
      a.m1, a.n_m1, a.m2, a.n_m2, a.tr_s1, a.n_s1, a.tr_s2, a.n_s2, a.mu, a.d, a.sigma2, a.out);
  OTGPU_LAUNCH_CHECK();
}

void gaussian_symmetrize(double* a, std::int64_t count, std::int64_t d, cudaStream_t stream) {
  if (count <= 0) return;
  symmetrize_kernel<<<grid_for(count * d * d), kThreads, 0, stream>>>(a, count, d);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
