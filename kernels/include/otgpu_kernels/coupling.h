// Kernels of the coupling samplers (otgpu/coupling.h) on a cost matrix C [K, n, m]
// (fp32, row-major, in device memory) and the fp32 potentials f [K, n], g [K, m] of a
// solve with uniform weights (log a_i + log b_j is the same for every entry, so it is
// left out of every score). Launchers take device pointers, sizes and a stream; they
// never allocate or synchronize. Plain C++ header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace otgpu::kernels {

/// out[r] = |x_r|^2 over the rows of x [rows, d].
void row_sqnorms(const float* x, std::int64_t rows, std::int64_t d, float* out, cudaStream_t s);

/// C[k, i, j] <- max(nx[k, i] + ny[k, j] - 2 C[k, i, j], 0) where C held the inner
/// products <x_i, y_j>; the square root of that for the Euclidean cost.
void sqdist_from_gram(float* C, const float* nx, const float* ny, std::int64_t K, std::int64_t n,
                      std::int64_t m, bool euclidean, cudaStream_t s);

/// eps_out[k] = eps x mean(C_k) when relative, else eps (one block per problem).
void coupling_eps(const float* C, std::int64_t K, std::int64_t nm, double eps, bool relative,
                  double* eps_out, cudaStream_t s);

/// logr[k, i] = f_i / eps_k + LSE_j((g_j - C_ij) / eps_k): the log row mass of the plan
/// up to the constant log a_i + log b_j (one block per row).
void row_log_mass(const float* C, const float* f, const float* g, const double* eps, std::int64_t K,
                  std::int64_t n, std::int64_t m, float* logr, cudaStream_t s);

/// Draw t of problem k takes the row i_out[k, t] by inverse CDF of exp(logr[k, .]) at
/// the uniform keyed_uniform(seed, kStreamRowUniform, k, t) (one block per problem;
/// cdf [K, n] doubles of scratch).
void draw_rows(const float* logr, std::int64_t K, std::int64_t n, std::int64_t P,
               std::uint64_t seed, double* cdf, std::int64_t* i_out, cudaStream_t s);

/// j_out[k, t] = argmax_j (g_j - C[k, i_t, j]) / eps_k + Gumbel(col_seed, k, t, j)
/// (one warp per draw; ties go to the smaller j).
void draw_columns(const float* C, const float* g, const double* eps, const std::int64_t* i_in,
                  std::int64_t K, std::int64_t n, std::int64_t m, std::int64_t P,
                  std::uint64_t col_seed, std::int64_t* j_out, cudaStream_t s);

/// Scratch of topk_pairs, sized by topk_tiles.
struct TopKScratch {
  std::uint32_t* hist = nullptr;         ///< [K, 256]
  std::uint32_t* prefix = nullptr;       ///< [K] the threshold's bits found so far
  std::uint32_t* remaining = nullptr;    ///< [K] entries still to take at the threshold
  std::uint32_t* tile_gt = nullptr;      ///< [K, tiles] entries above the threshold per tile
  std::uint32_t* tile_eq = nullptr;      ///< [K, tiles] entries equal to it per tile
  std::int64_t* tile_eq_off = nullptr;   ///< [K, tiles] ties before the tile
  std::int64_t* tile_sel_off = nullptr;  ///< [K, tiles] selected entries before the tile
};
/// Tiles of the ordered compaction over n * m entries.
std::int64_t topk_tiles(std::int64_t nm);

/// The P largest keys z_ij = (f_i + g_j - C_ij) / eps_k + Gumbel(key_seed, k, i, j) of
/// each problem (fp32 keys), written as (i, j) in increasing linear index i * m + j.
/// The threshold is found by a 4-pass radix select (8 bits per pass) over the keys,
/// recomputed from C in every pass; ties at the threshold go to the smaller index, and a
/// NaN key ranks below every number.
void topk_pairs(const float* C, const float* f, const float* g, const double* eps, std::int64_t K,
                std::int64_t n, std::int64_t m, std::int64_t P, std::uint64_t key_seed,
                const TopKScratch& scratch, std::int64_t* i_out, std::int64_t* j_out,
                cudaStream_t s);

/// out[k * n + i] = i.
void iota_rows(std::int64_t* out, std::int64_t K, std::int64_t n, cudaStream_t s);

/// mean[k] = mean over t of C[k, i[k, t], j[k, t]] over the pairs with i, j >= 0 (0 when
/// there are none, as on the CPU; fp64 sum; one block per problem).
void pair_cost_mean(const float* C, const std::int64_t* i, const std::int64_t* j, std::int64_t K,
                    std::int64_t n, std::int64_t m, std::int64_t P, double* mean, cudaStream_t s);

}  // namespace otgpu::kernels
