// The CUDA backend as seen by the dispatch layer. Implemented in host/src/cuda/
// when the build has CUDA, and by host/src/cuda_backend_stub.cpp otherwise (where
// every call throws DeviceUnavailable). Never includes a CUDA header.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/device.h"
#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::cuda_backend {

/// Number of usable CUDA devices (0 when built without CUDA or without a driver).
int device_count() noexcept;
/// Throws DeviceUnavailable naming `device` when it cannot be used.
void require_device(int device);

// The synchronous entry points run on ctx (nullptr: the calling thread's cached
// context of the device, on the legacy default stream) and return once their work on
// its stream has completed.
SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options,
                        const detail::SinkhornShape& shape, GpuContext* ctx = nullptr);
std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape, int device,
                                    GpuContext* ctx = nullptr);
std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape, int device,
                               GpuContext* ctx = nullptr);
std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed,
                                          int device, GpuContext* ctx = nullptr);

/// The self-transport problem OT_eps(a, a) (problem.y = x, b = a, B <= 65,535) by the
/// symmetric update f <- (f + T(f)) / 2, as cpu::sinkhorn_symmetric (host/src/cuda/
/// sinkhorn_symmetric.cpp); options resolved for the CUDA backend. f is both potentials.
SinkhornResult sinkhorn_symmetric(const SinkhornProblem& problem, const SinkhornOptions& options,
                                  const detail::SinkhornShape& shape);

/// Total mass of weights w in device memory per problem ([batch] when batched, else
/// [1]; absent weights: {1}), read back on `device` (the divergence's mass term).
std::vector<double> weight_masses(const TensorView& w, bool batched, std::int64_t batch,
                                  int device);

// ---- batch chunks and problem identity (plain C++, host/src/backend.cpp) ----

/// Problems [begin, begin + count) of a batch.
struct BatchChunk {
  std::int64_t begin = 0, count = 0;
};

/// Splits a batch of B problems into consecutive chunks of at most max_per_chunk
/// (>= 1) problems, the last one possibly shorter; B = 0 gives none.
std::vector<BatchChunk> batch_chunks(std::int64_t B, std::int64_t max_per_chunk);

/// The problems [begin, begin + count) of a validated problem, as views into the same
/// memory (no copy): batched views (x, y, cost of rank 3, weights of rank 2) move
/// their data pointer by begin * stride(0) elements and take count as dim 0; shared
/// views (rank-1 weights, absent views) are unchanged.
SinkhornProblem slice_batch(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                            std::int64_t begin, std::int64_t count);

/// True when p and q view the same tensors: same cost kind and, per view, the same
/// data pointer, dtype, memory space, rank, shape and strides (the contents are not
/// compared: a state kept for p is only valid while p's data is unchanged).
bool same_problem(const SinkhornProblem& p, const SinkhornProblem& q) noexcept;

}  // namespace otgpu::cuda_backend
