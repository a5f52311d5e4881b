// The minibatch OT estimator (Fatras et al., AISTATS 2020): the mean of the OT value
// of K minibatches of size bs drawn from two point clouds, with its standard error
// and its gradient with respect to the points.
//
//   x [N, d], y [M, d];  batch k draws rows I_k of x and J_k of y, bs each, uniformly
//   without replacement within the batch (keys below), and solves the problem
//   mu_k = (1/bs) sum_{i in I_k} delta_{x_i},  nu_k = (1/bs) sum_{j in J_k} delta_{y_j}.
//   value_k = OT(mu_k, nu_k):
//     exact     (1/bs) min_s sum_i C(x_{I_k(i)}, y_{J_k(s(i))}) (the assignment / bs);
//     sinkhorn  OT_eps(mu_k, nu_k) (the dual objective of otgpu/sinkhorn.h);
//     debiased  S_eps = OT_eps(mu_k, nu_k) - OT_eps(mu_k, mu_k)/2 - OT_eps(nu_k, nu_k)/2.
//   mean = (1/K) sum_k value_k,  std_error = sd(value_k) / sqrt(K) (sd with K - 1; 0
//   when K = 1).
//   grad_x[p] = (1/K) sum_{k : p in I_k} d value_k / d x_p (a point drawn by no batch
//   has gradient 0), likewise grad_y:
//     exact     (1/bs) grad_x C(x_p, y_{s(p)}) at the optimal matching (a.e.);
//     sinkhorn  gradient_x at the potentials: sum_j P_pj grad_x C(x_p, y_j);
//     debiased  that minus the self term's: sum_j P^xx_pj grad_x C(x_p, x_j) (the
//               symmetric plan of OT_eps(mu_k, mu_k), whose x appears on both sides).
//   The entropic gradients hold eps fixed (with eps_relative, at the eps each batch's
//   mean cost gave; the dependence of that mean on the points is not differentiated).
// Keys: batch k's rows of x are the bs smallest of u(seed, k, p) over p in [0, N),
// u a Philox4x32-10 draw keyed by (seed, stream x, k, p) (likewise for y with stream
// y), so the batches depend on (seed, N, M, bs, K) only, and sorted increasingly.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "otgpu/types.h"

namespace otgpu {

enum class MinibatchMethod : std::uint8_t { exact, sinkhorn };

struct MinibatchOptions {
  std::int64_t k = 16;   ///< number of minibatches K (>= 1)
  std::int64_t bs = 64;  ///< minibatch size (1 <= bs <= min(N, M))
  MinibatchMethod method = MinibatchMethod::sinkhorn;
  bool debiased = false;  ///< Sinkhorn divergence instead of OT_eps (sinkhorn only)
  CostKind cost_kind = CostKind::sqeuclidean;
  double eps = 0.05;  ///< entropic eps; times each batch's mean cost when eps_relative
  bool eps_relative = true;
  std::uint64_t seed = 0;
  bool gradient = true;  ///< compute grad_x and grad_y
  /// Passed to the Sinkhorn solve; eps, eps_relative, backend and device above win.
  SinkhornOptions sinkhorn{};
  Backend backend = Backend::automatic;
  int device = 0;
};

struct MinibatchResult {
  Backend backend = Backend::cpu;
  double mean = 0;
  double std_error = 0;
  std::vector<double> values;        ///< [K] value_k
  std::vector<double> grad_x;        ///< [N, d] (empty when options.gradient is false)
  std::vector<double> grad_y;        ///< [M, d]
  std::vector<std::int64_t> rows_x;  ///< [K, bs] the rows of x each batch drew
  std::vector<std::int64_t> rows_y;  ///< [K, bs]
  bool converged = true;             ///< every solve converged (entropic) or certified
  double time_ms = 0;
};

/// The estimator. x [N, d] and y [M, d] in host memory (f32 or f64, any strides).
/// Throws ShapeError (rank, d mismatch, bs > N or M, k < 1 or bs < 1 named as such),
/// NonFiniteInput (NaN or infinity, named with the element), InvalidArgument
/// (debiased with exact, eps), DeviceUnavailable.
MinibatchResult minibatch_ot(const TensorView& x, const TensorView& y,
                             const MinibatchOptions& options = {});

/// The rows the estimator draws: [K, bs] sorted increasingly per batch, the bs
/// smallest Philox keys of (seed, stream, k, p) over p in [0, N). stream 0 is x, 1 y.
std::vector<std::int64_t> minibatch_rows(std::int64_t N, std::int64_t bs, std::int64_t K,
                                         std::uint64_t seed, int stream);

}  // namespace otgpu
