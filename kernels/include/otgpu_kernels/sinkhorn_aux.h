// Small per-problem kernels of the CUDA Sinkhorn driver: the convergence residual
// with per-problem stopping, the final report reductions (in double), and dense-cost
// sampling. Canonical layout as in sinkhorn_dense.h. Plain C++ header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace otgpu::kernels {

/// Final per-problem report at (F, G), target eps, in double:
///   mass_i = a_i exp((F_i - Ft_i)/eps) (Ft: the balanced f-update from G),
///   marginal_error = sum_i |mass_i - a_i|, transport_cost = sum_i mass_i cmean_i,
///   residual = sum_i a_i |exp((F_i - lambda_a Ft_i)/eps) - 1|,
///   ot_eps = F_a(f) + F_b(g) - eps (sum_i mass_i - m_a m_b),
///   F_a(f) = <a, f> (rho_a infinite) or rho_a <a, 1 - exp(-f/rho_a)>.
/// cmean [B,n]: mean cost of row i under P_i. / mass_i; pass nullptr together with
/// row_mass/row_cost [B,n] to use row_cost/row_mass instead.
/// Outputs out4 [B,4] = (ot_eps, transport_cost, marginal_error, residual).
void sinkhorn_finalize(const double* a, const double* b, const float* F, const float* G,
                       const float* Ft, const float* cmean, const float* row_mass,
                       const float* row_cost, const float* eps, double rho_a, double rho_b,
                       double* out4, std::int64_t B, std::int64_t n, std::int64_t m,
                       cudaStream_t stream);

/// Gumbel-max sampling on a dense cost: out[b,i] = argmax_j logB_j + (G_j - C_ij)/eps
/// + gumbel(seed, batch_offset + b, row_offset + i, j), skipping zero weights
/// (batch_offset: index of problem 0 in the caller's batch, so that chunks draw what
/// the whole batch would; row_offset: index of row 0 in the whole problem, so that a
/// shard of the sharded solve, C its rows [B, n, m], draws what the whole problem
/// would). The one cost-matrix sampler of the single-GPU and the sharded solves.
void dense_sample(const float* C, const float* logB, const float* G, const float* eps,
                  std::uint64_t seed, std::int64_t* out, std::int64_t B, std::int64_t n,
                  std::int64_t m, cudaStream_t stream, std::int64_t batch_offset = 0,
                  std::int64_t row_offset = 0);

/// Mean Euclidean cost sum_{i,j} |x_i - y_j| / (n m) per problem, in double, for
/// eps_relative (the squared Euclidean mean has a closed form on the host).
/// X [B,n,dp], Y [B,m,dp]; out [B] double.
void mean_euclidean_cost(const float* X, const float* Y, double* out, std::int64_t B,
                         std::int64_t n, std::int64_t m, int dp, cudaStream_t stream);

/// Mean of each problem's n*m cost entries, in double: out[B]. C [B, n*m] fp32.
void mean_matrix_cost(const float* C, std::int64_t B, std::int64_t nm, double* out,
                      cudaStream_t stream);

/// Device-side input validation (the host cannot read device views):
/// *first = smallest flat index e with p[e] not finite, or ~0ull when all are finite.
/// The launcher initializes *first (stream-ordered).
void find_nonfinite(const float* p, std::int64_t count, unsigned long long* first,
                    cudaStream_t stream);

/// Weights w [B, len] in double: mass[b] = sum_i w[b, i], and *first = smallest flat
/// index of an element that is not finite or negative (~0ull: none).
void check_weights(const double* w, std::int64_t B, std::int64_t len, double* mass,
                   unsigned long long* first, cudaStream_t stream);

/// ratio[b] = mass(a_b) / mass(b_b) when |mass(a) - mass(b)| <= tol_rel max(masses)
/// (tol_rel = +inf: always), else 1: the factor a balanced solve applied to b.
void mass_ratio(const double* a, const double* b, std::int64_t B, std::int64_t n, std::int64_t m,
                double tol_rel, double* ratio, cudaStream_t stream);

/// out[b, i, k] = T[b, i, k] + center[b, k] for k < d: the barycentric map back in the
/// caller's coordinates. T [B, n, dp], center [B, dp] (nullptr: 0), out [B, n, d].
void finish_map(const float* T, const double* center, float* out, std::int64_t B, std::int64_t n,
                std::int64_t d, int dp, cudaStream_t stream);

/// Gradient of OT_eps w.r.t. x_i from the softmax-weighted mean V [B, n, dp] of row i
/// (online_weighted_mean): with r_i = ratio_b a_i exp((F_i - Ft_i)/eps_b) (0 for
/// a_i = 0; Ft: the balanced f-update from G with the unscaled log b),
///   sqeuclidean (euclid = false, V = mean y): out = 2 r_i (x_i - V_i)
///   euclidean   (euclid = true,  V = mean unit direction): out = r_i V_i.
/// X [B, n, dp] (centered like V), ratio [B] or nullptr (1), out [B, n, d].
void finish_gradient(const float* X, const float* V, const double* a, const float* F,
                     const float* Ft, const float* eps, const double* ratio, bool euclid,
                     float* out, std::int64_t B, std::int64_t n, std::int64_t d, int dp,
                     cudaStream_t stream);

}  // namespace otgpu::kernels
