#include "otgpu_host/backend.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"

namespace otgpu::detail {

Backend resolve_backend(Backend requested, int device, MemorySpace space, std::string_view fn) {
  if (requested == Backend::cpu) {
    if (space == MemorySpace::device) {
      throw InvalidArgument(fmt::format(
          "{}: backend cpu: the tensors are in device memory; use backend cuda or auto", fn));
    }
    return Backend::cpu;
  }
  if (requested == Backend::cuda || space == MemorySpace::device) {
    cuda_backend::require_device(device);
    return Backend::cuda;
  }
  return device >= 0 && cuda_backend::device_count() > device ? Backend::cuda : Backend::cpu;
}

}  // namespace otgpu::detail

namespace otgpu::cuda_backend {

std::vector<BatchChunk> batch_chunks(std::int64_t B, std::int64_t max_per_chunk) {
  if (max_per_chunk < 1) {
    throw InvalidArgument(fmt::format("batch_chunks: max_per_chunk {} < 1", max_per_chunk));
  }
  std::vector<BatchChunk> out;
  for (std::int64_t b = 0; b < B; b += max_per_chunk) {
    out.push_back({b, std::min(max_per_chunk, B - b)});
  }
  return out;
}

namespace {

/// Problems [begin, begin + count) along dim 0 of a batched view.
TensorView slice_dim0(TensorView v, std::int64_t begin, std::int64_t count) {
  v.data = static_cast<const char*>(v.data) +
           begin * v.stride(0) * static_cast<std::int64_t>(dtype_size(v.dtype));
  v.shape[0] = count;
  return v;
}

bool same_view(const TensorView& u, const TensorView& v) noexcept {
  if (u.data != v.data || u.dtype != v.dtype || u.space != v.space || u.rank != v.rank) {
    return false;
  }
  for (int k = 0; k < u.rank; ++k) {
    if (u.dim(k) != v.dim(k) || u.stride(k) != v.stride(k)) return false;
  }
  return true;
}

}  // namespace

SinkhornProblem slice_batch(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                            std::int64_t begin, std::int64_t count) {
  if (begin < 0 || count < 1 || begin + count > shape.batch) {
    throw InvalidArgument(fmt::format("slice_batch: problems [{}, {}) outside the batch of {}",
                                      begin, begin + count, shape.batch));
  }
  if (begin == 0 && count == shape.batch) return problem;
  SinkhornProblem p = problem;
  // Only a batched problem (rank-3 points or cost) has B > 1.
  if (p.x.present() && p.x.rank == 3) p.x = slice_dim0(p.x, begin, count);
  if (p.y.present() && p.y.rank == 3) p.y = slice_dim0(p.y, begin, count);
  if (p.cost.present() && p.cost.rank == 3) p.cost = slice_dim0(p.cost, begin, count);
  if (shape.a_batched) p.a = slice_dim0(p.a, begin, count);
  if (shape.b_batched) p.b = slice_dim0(p.b, begin, count);
  return p;
}

bool same_problem(const SinkhornProblem& p, const SinkhornProblem& q) noexcept {
  return p.cost_kind == q.cost_kind && same_view(p.x, q.x) && same_view(p.y, q.y) &&
         same_view(p.cost, q.cost) && same_view(p.a, q.a) && same_view(p.b, q.b);
}

}  // namespace otgpu::cuda_backend
