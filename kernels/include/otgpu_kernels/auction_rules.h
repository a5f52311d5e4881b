// The scalar rules of the GPU auction (kernels/src/assignment.cu): the eps schedule,
// the bid, the phase stopping test and the tie order among equal values. The block and
// the grid kernels both call these, and the tests replay the auction on the CPU with
// them, so the rules are pinned without a device. No CUDA header (OTGPU_HOST_DEVICE).
#pragma once

#include <cfloat>

#include "otgpu/config.h"

namespace otgpu::kernels::auction {

/// Scale and eps schedule of one problem of padded size N, from its least and largest
/// finite costs lo, hi over the original [n, m] corner (lo = +inf and hi = -inf when
/// no pair is allowed).
struct Schedule {
  /// hi - lo; max(|hi|, 1) when that is not positive (every cost equal), 1 when it is
  /// not finite (no allowed pair; the problem is infeasible then, or the costs span
  /// more than the fp64 range).
  double range;
  double eps;        ///< of the first phase: range / 4
  double eps_floor;  ///< 4e-16 N range: the phases stop at this eps
  long long cap;     ///< rounds per phase before giving up: 20 N + 2000
};

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE Schedule schedule(double lo, double hi, int N) {
  double range = hi - lo;
  if (!(range > 0)) {
    const double a = hi < 0 ? -hi : hi;
    range = a > 1.0 ? a : 1.0;  // fmax(|hi|, 1), NaN -> 1
  }
  if (!(range <= DBL_MAX)) range = 1.0;
  Schedule s;
  s.range = range;
  s.eps = range / 4;
  s.eps_floor = range * 4e-16 * N;
  s.cap = 20LL * N + 2000;
  return s;
}

/// The eps of the next phase: eps / 8, not below the floor.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double next_eps(double eps, double eps_floor) {
  const double e = eps / 8;
  return e > eps_floor ? e : eps_floor;
}

/// Whether the phases stop after one whose certificate on the padded problem has this
/// cost, sum of |cost| and dual objective: the gap is round-off, or eps is at its floor.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool phases_done(double cost, double abs_cost, double dual,
                                                     double range, int N, double eps,
                                                     double eps_floor) {
  return cost - dual <= 1e-10 * abs_cost + 1e-13 * range * N || eps <= eps_floor;
}

/// The bid of a row for its best column j1 (price p1, value v1 = -C_ij1 - p1) when the
/// best value of its other allowed columns is v2 (-inf: none; the second choice is then
/// taken as range + eps worse than the best): p1 + (v1 - v2) + eps.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double bid(double p1, double v1, double v2, double range,
                                               double eps) {
  const double second = v2 >= -DBL_MAX ? v2 : v1 - range - eps;
  return p1 + (v1 - second) + eps;
}

/// Rank of column j among columns of equal value for row i: the first column at or after
/// i (cyclically) wins, so rows with equal costs (the zero-cost padding, tied data)
/// spread over the columns in one round instead of queueing for the same one.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int tie_rank(int j, int i, int N) {
  return j >= i ? j - i : j - i + N;
}

/// Warps G that bid together for one row on the grid path when `count` rows bid and the
/// problem has `warps` warps: the largest power of two up to a block (`block_warps`)
/// with G * count <= warps, at least 1. One warp per row while many rows bid; in the
/// long tail of a phase a group of warps shares a row's columns.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int group_warps(int count, int warps, int block_warps) {
  int G = 1;
  while (G < block_warps && count * (2 * G) <= warps) G *= 2;
  return G;
}

/// Blocks per problem of the grid path, 0 for the block path. All K * B blocks must be
/// resident at once (a problem's blocks spin at their barrier on each other), so K * B
/// never exceeds `per_sm` (the occupancy of the compiled grid kernel at its launch
/// size) times `sms`; B is also at most #SMs and one block per `rows_per_block` rows
/// (but 2). `automatic`: the grid only when K < #SMs and N > 256; `forced`: whenever
/// two blocks per problem fit. No cooperative launch, or fewer than 2 blocks: 0.
inline long long grid_blocks(long long K, long long N, int sms, int per_sm, bool cooperative,
                             bool automatic, long long rows_per_block) {
  if (automatic && (K >= sms || N <= 256)) return 0;
  if (!cooperative || K <= 0) return 0;
  const long long fit = static_cast<long long>(per_sm) * sms / K;
  long long useful = (N + rows_per_block - 1) / rows_per_block;
  if (useful < 2) useful = 2;
  long long B = fit < sms ? fit : sms;
  if (useful < B) B = useful;
  return B >= 2 ? B : 0;
}

}  // namespace otgpu::kernels::auction
