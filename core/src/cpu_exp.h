// The CPU reference's own fp64 exp: vectorized for the log-sum-exp loops of the
// Sinkhorn solve and bit-identical across instruction sets. Internal (not installed).
#pragma once

#include <cstdint>

namespace otgpu::cpu {

/// exp(x) for every double x: within 1 ulp of the true value (about 0.51 ulp by
/// construction), NaN for NaN, +inf above ln(DBL_MAX), 0 below the smallest subnormal,
/// subnormal results rounded once.
///
/// Method (Tang's table method): x = (64 k' + i) ln2/64 + r with k = round(64 x / ln2),
/// i = k mod 64, |r| <= ln2/128, the product k ln2/64 split Cody-Waite style into a
/// 34-bit head (exact times any |k| < 2^17) and a tail; exp(x) = 2^k' 2^(i/64) e^r with
/// 2^(i/64) tabulated as a head + tail pair (the pair exact to ~2^-106) and e^r - 1 =
/// r + r^2 (1/2! + r/3! + ... + r^4/6!) (truncation < 2^-64 relative); the result is
/// T_hi + (T_hi p + T_lo) scaled by 2^k' through the exponent bits.
///
/// Every step is one IEEE-754 multiply or add (the file is compiled with
/// -ffp-contract=off, no fused multiply-add), so the scalar function and each vector
/// build return the same bits for the same argument on every x86-64 machine.
double exp_det(double x) noexcept;

/// out[j] = exp_det(in[j] - shift) for j < len (in may equal out).
void exp_shifted(const double* in, std::int64_t len, double shift, double* out) noexcept;

/// Where expm1_det switches from std::expm1 to exp_det(t) - 1: |t| >= kExpm1Cut.
/// Error bound of exp_det(t) - 1 there, with u = 2^-53: exp_det is within 0.51 ulp, i.e.
/// |err| <= 1.02 u e^t, and the subtraction adds one rounding (<= u relative), so the
/// relative error is <= 1.02 u e^t / |e^t - 1| + u: <= 1.02 u + u for t <= -0.7
/// (e^t / (1 - e^t) <= 0.99) and <= 2.03 u + u for t >= 0.7 (e^t / (e^t - 1) <= 1.99),
/// i.e. under about 1.5 ulp everywhere. Below the cut the cancellation of e^t - 1
/// grows as 1/|t|, so std::expm1 keeps its sub-ulp accuracy there.
inline constexpr double kExpm1Cut = 0.7;

/// out[j] = expm1(in[j]) for j < len (in may equal out): exp_det(t) - 1 where
/// |t| >= kExpm1Cut (vectorized), std::expm1(t) below it and for NaN. Same bits on
/// every instruction set (the std::expm1 part is the same scalar libm call on each).
void expm1_det(const double* in, std::int64_t len, double* out) noexcept;

/// The sums of a log-sum-exp row: with t_j = s_j - mx and the terms below `cut` dropped
/// (cut >= -700),
///   sum      = sum_{t_j >= cut} exp_det(t_j),
///   weighted = sum_{t_j >= cut} exp_det(t_j) c_j   (0 when c is null).
/// Precondition: no s_j is NaN and s_j <= mx (-inf allowed: dropped).
/// Summation order, fixed and independent of the instruction set: term j goes to
/// accumulator j mod 8 (in increasing j), and the accumulators a_0..a_7 are combined as
/// ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)).
struct ExpSums {
  double sum;
  double weighted;
};
ExpSums exp_sums(const double* s, const double* c, std::int64_t len, double mx,
                 double cut) noexcept;

/// The scores of a log-sum-exp row, s_j = log_w_j + (pot_j - c_j) inv_eps (one multiply
/// and two adds each, unfused), written to s [len]; returns max_j s_j (-inf when len =
/// 0 or every s_j is -inf; a zero max as +0) and sets nan when some s_j is NaN.
double lse_scores(const double* c, const double* log_w, const double* pot, std::int64_t len,
                  double inv_eps, double* s, bool& nan) noexcept;

/// The instruction-set builds of the vector kernels, for tests (each must give the
/// same bits) and measurements. The unqualified functions above use the widest one
/// the CPU supports.
enum class ExpIsa { sse2, avx2, avx512 };
bool exp_isa_supported(ExpIsa isa) noexcept;
void exp_shifted_isa(ExpIsa isa, const double* in, std::int64_t len, double shift,
                     double* out) noexcept;
double lse_scores_isa(ExpIsa isa, const double* c, const double* log_w, const double* pot,
                      std::int64_t len, double inv_eps, double* s, bool& nan) noexcept;
void expm1_det_isa(ExpIsa isa, const double* in, std::int64_t len, double* out) noexcept;
ExpSums exp_sums_isa(ExpIsa isa, const double* s, const double* c, std::int64_t len, double mx,
                     double cut) noexcept;

}  // namespace otgpu::cpu
