// Input validation shared by every backend. Internal (not installed).
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"

namespace otgpu::detail {

/// Sizes of a validated Sinkhorn batch.
struct SinkhornShape {
  std::int64_t batch = 0;
  std::int64_t n = 0;
  std::int64_t m = 0;
  std::int64_t d = 0;      ///< 0 for CostKind::matrix
  bool a_batched = false;  ///< a is [B, n] (else shared [n] or uniform)
  bool b_batched = false;
  MemorySpace space = MemorySpace::host;  ///< where all present views live
};

/// Checks shapes, ranks, dtypes, sizes > 0, memory spaces (all views in one space),
/// options (eps > 0 finite, max_iter >= 1, tol >= 0, check_every >= 0, eps_init /
/// eps_decay, rho > 0, warm-start sizes), finiteness of host inputs, non-negative
/// weights with positive mass and equal masses when balanced. Throws the typed
/// errors of otgpu/error.h with messages naming the argument and the value.
SinkhornShape validate_sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options);

/// The library's defaults, in one place, for the backend that will run (cpu or
/// cuda, already resolved): tol kAuto -> default_tolerance(backend); eps_init kAuto
/// -> 0 (no scaling) with a warm start, else kept: the CPU solver and the CUDA
/// synchronous driver run the continuation schedule from 1024 x eps where the costs
/// say it pays (the CUDA small kernel and sinkhorn_async do not scale). Every other
/// option is copied. Called by the dispatch before either backend runs.
SinkhornOptions resolve_sinkhorn_options(const SinkhornOptions& options, Backend backend);

/// 1e-6 for the fp64 CPU, 1e-4 for the fp32 CUDA backend (its L1 residual has a floor
/// near 1e-5 from the fp32 round-off of f / eps).
double default_tolerance(Backend backend) noexcept;

}  // namespace otgpu::detail
