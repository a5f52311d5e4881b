// The CPU reference's deterministic fp64 exp (cpu_exp.h).
//
// Compiled with -ffp-contract=off (core/CMakeLists.txt): a fused multiply-add in one
// build and not another would change the last bits between machines, and the CPU
// result is the reference every GPU result is compared with.
#include "cpu_exp.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace otgpu::cpu {

namespace {

// The vector helpers below are always inlined into the instruction-set builds, which
// never pass vectors across a call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

typedef double v2d __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef long long v2i __attribute__((vector_size(16)));
typedef long long v4i __attribute__((vector_size(32)));
typedef long long v8i __attribute__((vector_size(64)));

/// 2^(i/64) = kTable[i][0] + kTable[i][1], i = 0..63: the head is the double nearest
/// to it, the tail the double nearest to the remainder (computed in 80-digit decimal).
alignas(64) constexpr double kTable[64][2] = {
    {0x1.0000000000000p+0, 0x0.0p+0},
    {0x1.02c9a3e778061p+0, -0x1.19083535b085dp-56},
    {0x1.059b0d3158574p+0, 0x1.d73e2a475b465p-55},
    {0x1.0874518759bc8p+0, 0x1.186be4bb284ffp-57},
    {0x1.0b5586cf9890fp+0, 0x1.8a62e4adc610bp-54},
    {0x1.0e3ec32d3d1a2p+0, 0x1.03a1727c57b53p-59},
    {0x1.11301d0125b51p+0, -0x1.6c51039449b3ap-54},
    {0x1.1429aaea92de0p+0, -0x1.32fbf9af1369ep-54},
    {0x1.172b83c7d517bp+0, -0x1.19041b9d78a76p-55},
    {0x1.1a35beb6fcb75p+0, 0x1.e5b4c7b4968e4p-55},
    {0x1.1d4873168b9aap+0, 0x1.e016e00a2643cp-54},
    {0x1.2063b88628cd6p+0, 0x1.dc775814a8495p-55},
    {0x1.2387a6e756238p+0, 0x1.9b07eb6c70573p-54},
    {0x1.26b4565e27cddp+0, 0x1.2bd339940e9d9p-55},
    {0x1.29e9df51fdee1p+0, 0x1.612e8afad1255p-55},
    {0x1.2d285a6e4030bp+0, 0x1.0024754db41d5p-54},
    {0x1.306fe0a31b715p+0, 0x1.6f46ad23182e4p-55},
    {0x1.33c08b26416ffp+0, 0x1.32721843659a6p-54},
    {0x1.371a7373aa9cbp+0, -0x1.63aeabf42eae2p-54},
    {0x1.3a7db34e59ff7p+0, -0x1.5e436d661f5e3p-56},
    {0x1.3dea64c123422p+0, 0x1.ada0911f09ebcp-55},
    {0x1.4160a21f72e2ap+0, -0x1.ef3691c309278p-58},
    {0x1.44e086061892dp+0, 0x1.89b7a04ef80d0p-59},
    {0x1.486a2b5c13cd0p+0, 0x1.3c1a3b69062f0p-56},
    {0x1.4bfdad5362a27p+0, 0x1.d4397afec42e2p-56},
    {0x1.4f9b2769d2ca7p+0, -0x1.4b309d25957e3p-54},
    {0x1.5342b569d4f82p+0, -0x1.07abe1db13cadp-55},
    {0x1.56f4736b527dap+0, 0x1.9bb2c011d93adp-54},
    {0x1.5ab07dd485429p+0, 0x1.6324c054647adp-54},
    {0x1.5e76f15ad2148p+0, 0x1.ba6f93080e65ep-54},
    {0x1.6247eb03a5585p+0, -0x1.383c17e40b497p-54},
    {0x1.6623882552225p+0, -0x1.bb60987591c34p-54},
    {0x1.6a09e667f3bcdp+0, -0x1.bdd3413b26456p-54},
    {0x1.6dfb23c651a2fp+0, -0x1.bbe3a683c88abp-57},
    {0x1.71f75e8ec5f74p+0, -0x1.16e4786887a99p-55},
    {0x1.75feb564267c9p+0, -0x1.0245957316dd3p-54},
    {0x1.7a11473eb0187p+0, -0x1.41577ee04992fp-55},
    {0x1.7e2f336cf4e62p+0, 0x1.05d02ba15797ep-56},
    {0x1.82589994cce13p+0, -0x1.d4c1dd41532d8p-54},
    {0x1.868d99b4492edp+0, -0x1.fc6f89bd4f6bap-54},
    {0x1.8ace5422aa0dbp+0, 0x1.6e9f156864b27p-54},
    {0x1.8f1ae99157736p+0, 0x1.5cc13a2e3976cp-55},
    {0x1.93737b0cdc5e5p+0, -0x1.75fc781b57ebcp-57},
    {0x1.97d829fde4e50p+0, -0x1.d185b7c1b85d1p-54},
    {0x1.9c49182a3f090p+0, 0x1.c7c46b071f2bep-56},
    {0x1.a0c667b5de565p+0, -0x1.359495d1cd533p-54},
    {0x1.a5503b23e255dp+0, -0x1.d2f6edb8d41e1p-54},
    {0x1.a9e6b5579fdbfp+0, 0x1.0fac90ef7fd31p-54},
    {0x1.ae89f995ad3adp+0, 0x1.7a1cd345dcc81p-54},
    {0x1.b33a2b84f15fbp+0, -0x1.2805e3084d708p-57},
    {0x1.b7f76f2fb5e47p+0, -0x1.5584f7e54ac3bp-56},
    {0x1.bcc1e904bc1d2p+0, 0x1.23dd07a2d9e84p-55},
    {0x1.c199bdd85529cp+0, 0x1.11065895048ddp-55},
    {0x1.c67f12e57d14bp+0, 0x1.2884dff483cadp-54},
    {0x1.cb720dcef9069p+0, 0x1.503cbd1e949dbp-56},
    {0x1.d072d4a07897cp+0, -0x1.cbc3743797a9cp-54},
    {0x1.d5818dcfba487p+0, 0x1.2ed02d75b3707p-55},
    {0x1.da9e603db3285p+0, 0x1.c2300696db532p-54},
    {0x1.dfc97337b9b5fp+0, -0x1.1a5cd4f184b5cp-54},
    {0x1.e502ee78b3ff6p+0, 0x1.39e8980a9cc8fp-55},
    {0x1.ea4afa2a490dap+0, -0x1.e9c23179c2893p-54},
    {0x1.efa1bee615a27p+0, 0x1.dc7f486a4b6b0p-54},
    {0x1.f50765b6e4540p+0, 0x1.9d3e12dd8a18bp-54},
    {0x1.fa7c1819e90d8p+0, 0x1.74853f3a5931ep-55},
};

constexpr double kInvL = 0x1.71547652b82fep+6;  // 64 / ln 2
constexpr double kLHi = 0x1.62e42fef80000p-7;   // ln2/64, 34 significant bits
constexpr double kLLo = 0x1.1cf79abc9e3b4p-42;  // ln2/64 - kLHi
constexpr double kShift = 0x1.8p52;             // x + kShift rounds x to an integer (|x| < 2^51)
constexpr double kC2 = 1.0 / 2, kC3 = 1.0 / 6, kC4 = 1.0 / 24, kC5 = 1.0 / 120, kC6 = 1.0 / 720;
/// Arguments whose result is a normal double for every table entry and r: the fast
/// path (bits of 2^k' added to the exponent field) is exact there.
constexpr double kFastMin = -707.0, kFastMax = 709.0;

std::int64_t bits_of(double x) noexcept {
  std::int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
double from_bits(std::int64_t b) noexcept {
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

/// y = 2^(i/64) e^r in [0.99, 2.02) and k' for x in [-746, 710] (see cpu_exp.h). The
/// vector kernel below performs the same operations in the same order, lane by lane.
double reduced(double x, std::int64_t& kp) noexcept {
  const double t = x * kInvL + kShift;
  const std::int64_t k = bits_of(t) - bits_of(kShift);
  const double kd = t - kShift;
  const double r = (x - kd * kLHi) - kd * kLLo;
  const std::int64_t i = k & 63;
  kp = (k - i) >> 6;
  const double th = kTable[i][0], tl = kTable[i][1];
  const double q = kC2 + r * (kC3 + r * (kC4 + r * (kC5 + r * kC6)));
  const double p = r + (r * r) * q;
  return th + (th * p + tl);
}

/// th[l], tl[l] = kTable[i[l]]: lane by lane in the baseline build, by gathers in the
/// AVX builds (same values: only the loads differ).
template <class V, class I>
[[gnu::always_inline]] inline void lookup(I i, V& th, V& tl) {
#pragma GCC unroll 8
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(double)); ++l) {
    th[l] = kTable[i[l]][0];
    tl[l] = kTable[i[l]][1];
  }
}
[[gnu::target("avx512f")]] inline void lookup(v8i i, v8d& th, v8d& tl) {
  const __m512i k =
      _mm512_add_epi64(__builtin_bit_cast(__m512i, i), __builtin_bit_cast(__m512i, i));
  th = __builtin_bit_cast(v8d,
                          _mm512_mask_i64gather_pd(_mm512_setzero_pd(), 0xFF, k, &kTable[0][0], 8));
  tl = __builtin_bit_cast(v8d,
                          _mm512_mask_i64gather_pd(_mm512_setzero_pd(), 0xFF, k, &kTable[0][1], 8));
}
[[gnu::target("avx2")]] inline void lookup(v4i i, v4d& th, v4d& tl) {
  const __m256d all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  const __m256i k =
      _mm256_add_epi64(__builtin_bit_cast(__m256i, i), __builtin_bit_cast(__m256i, i));
  th = __builtin_bit_cast(v4d,
                          _mm256_mask_i64gather_pd(_mm256_setzero_pd(), &kTable[0][0], k, all, 8));
  tl = __builtin_bit_cast(v4d,
                          _mm256_mask_i64gather_pd(_mm256_setzero_pd(), &kTable[0][1], k, all, 8));
}

template <class V, class I>
[[gnu::always_inline]] inline V exp_fast(V x) {
  const V t = x * kInvL + kShift;
  const I k = __builtin_bit_cast(I, t) - bits_of(kShift);
  const V kd = t - kShift;
  const V r = (x - kd * kLHi) - kd * kLLo;
  const I i = k & 63;
  const I kp = (k - i) >> 6;
  V th, tl;
  lookup(i, th, tl);
  const V q = kC2 + r * (kC3 + r * (kC4 + r * (kC5 + r * kC6)));
  const V p = r + (r * r) * q;
  const V y = th + (th * p + tl);
  const I out = __builtin_bit_cast(I, y) + (kp << 52);
  return __builtin_bit_cast(V, out);
}

template <class V>
[[gnu::always_inline]] inline V load(const double* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// True when every lane of the comparison mask m is set.
template <class I>
[[gnu::always_inline]] inline bool all_lanes(I m) {
  long long a[sizeof(I) / sizeof(long long)];
  std::memcpy(a, &m, sizeof a);
  long long all = -1;
#pragma GCC unroll 8
  for (std::size_t l = 0; l < sizeof a / sizeof a[0]; ++l) all &= a[l];
  return all != 0;
}
[[gnu::target("avx512f")]] inline bool all_lanes(v8i m) {
  return _mm512_cmpneq_epi64_mask(__builtin_bit_cast(__m512i, m), _mm512_setzero_si512()) == 0xFF;
}

/// s_j = log_w_j + (pot_j - c_j) inv_eps, their max (over every lane, then the lanes:
/// max is exact, so the order does not matter; a -0 max is returned as +0) and whether
/// any s_j is NaN.
template <class V, class I>
[[gnu::always_inline]] inline double scores_kernel(const double* c, const double* log_w,
                                                   const double* pot, std::int64_t len,
                                                   double inv_eps, double* s, bool& nan) {
  constexpr int W = static_cast<int>(sizeof(V) / sizeof(double));
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  V vmx = V{} + kNegInf;
  I vnan = I{};
  std::int64_t j = 0;
  for (; j + W <= len; j += W) {
    const V v = load<V>(log_w + j) + (load<V>(pot + j) - load<V>(c + j)) * inv_eps;
    std::memcpy(s + j, &v, sizeof v);
    vmx = v > vmx ? v : vmx;
    vnan |= v != v;
  }
  double mx = kNegInf;
  bool any_nan = false;
  for (int l = 0; l < W; ++l) {
    mx = vmx[l] > mx ? vmx[l] : mx;
    any_nan = any_nan || vnan[l] != 0;
  }
  for (; j < len; ++j) {
    const double v = log_w[j] + (pot[j] - c[j]) * inv_eps;
    s[j] = v;
    mx = v > mx ? v : mx;
    any_nan = any_nan || v != v;
  }
  nan = any_nan;
  return mx + 0.0;
}

template <class V, class I>
[[gnu::always_inline]] inline void shifted_kernel(const double* in, std::int64_t len, double shift,
                                                  double* out) {
  constexpr int W = static_cast<int>(sizeof(V) / sizeof(double));
  std::int64_t j = 0;
  for (; j + W <= len; j += W) {
    const V x = load<V>(in + j) - shift;
    const I fast = (x >= kFastMin) & (x <= kFastMax);  // false for NaN
    if (all_lanes(fast)) {
      const V e = exp_fast<V, I>(x);
      std::memcpy(out + j, &e, sizeof e);
    } else {
      for (int l = 0; l < W; ++l) out[j + l] = exp_det(x[l]);
    }
  }
  for (; j < len; ++j) out[j] = exp_det(in[j] - shift);
}

/// NV vectors of W lanes hold the 8 accumulators (NV W = 8): lane v W + l is
/// accumulator j mod 8 for the terms j = 8 b + v W + l.
template <class V, class I, int NV>
[[gnu::always_inline]] inline ExpSums sums_kernel(const double* s, const double* c,
                                                  std::int64_t len, double mx, double cut) {
  constexpr int W = static_cast<int>(sizeof(V) / sizeof(double));
  static_assert(NV * W == 8);
  V acc[NV], wacc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = wacc[v] = V{};
  auto block = [&](const double* sb, const double* cb) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const V x = load<V>(sb + v * W) - mx;
      const I keep = x >= cut;
      // Dropped lanes are evaluated at 0 (in range) and masked to +0.
      const V xc = __builtin_bit_cast(V, __builtin_bit_cast(I, x) & keep);
      const V e0 = exp_fast<V, I>(xc);
      const V e = __builtin_bit_cast(V, __builtin_bit_cast(I, e0) & keep);
      acc[v] += e;
      if (cb != nullptr) {
        // Masked after the product: a dropped term may have c_j = +inf.
        const V ec = e * load<V>(cb + v * W);
        wacc[v] += __builtin_bit_cast(V, __builtin_bit_cast(I, ec) & keep);
      }
    }
  };
  std::int64_t j = 0;
  for (; j + 8 <= len; j += 8) block(s + j, c != nullptr ? c + j : nullptr);
  if (j < len) {
    // The tail is a block padded with dropped terms (s = -inf, c = 0).
    double sp[8], cp[8];
    for (int l = 0; l < 8; ++l) {
      sp[l] = j + l < len ? s[j + l] : -std::numeric_limits<double>::infinity();
      cp[l] = j + l < len && c != nullptr ? c[j + l] : 0.0;
    }
    block(sp, c != nullptr ? cp : nullptr);
  }
  double a[8], w[8];
  std::memcpy(a, acc, sizeof a);
  std::memcpy(w, wacc, sizeof w);
  return {((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])),
          ((w[0] + w[1]) + (w[2] + w[3])) + ((w[4] + w[5]) + (w[6] + w[7]))};
}

[[gnu::target("avx512f"), gnu::flatten]] void shifted_avx512(const double* in, std::int64_t len,
                                                             double shift, double* out) {
  shifted_kernel<v8d, v8i>(in, len, shift, out);
}
[[gnu::target("avx2"), gnu::flatten]] void shifted_avx2(const double* in, std::int64_t len,
                                                        double shift, double* out) {
  shifted_kernel<v4d, v4i>(in, len, shift, out);
}
void shifted_sse2(const double* in, std::int64_t len, double shift, double* out) {
  shifted_kernel<v2d, v2i>(in, len, shift, out);
}
[[gnu::target("avx512f"), gnu::flatten]] ExpSums sums_avx512(const double* s, const double* c,
                                                             std::int64_t len, double mx,
                                                             double cut) {
  return sums_kernel<v8d, v8i, 1>(s, c, len, mx, cut);
}
[[gnu::target("avx2"), gnu::flatten]] ExpSums sums_avx2(const double* s, const double* c,
                                                        std::int64_t len, double mx, double cut) {
  return sums_kernel<v4d, v4i, 2>(s, c, len, mx, cut);
}
ExpSums sums_sse2(const double* s, const double* c, std::int64_t len, double mx, double cut) {
  return sums_kernel<v2d, v2i, 4>(s, c, len, mx, cut);
}

[[gnu::target("avx512f"), gnu::flatten]] double scores_avx512(const double* c, const double* log_w,
                                                              const double* pot, std::int64_t len,
                                                              double inv_eps, double* s,
                                                              bool& nan) {
  return scores_kernel<v8d, v8i>(c, log_w, pot, len, inv_eps, s, nan);
}
[[gnu::target("avx2"), gnu::flatten]] double scores_avx2(const double* c, const double* log_w,
                                                         const double* pot, std::int64_t len,
                                                         double inv_eps, double* s, bool& nan) {
  return scores_kernel<v4d, v4i>(c, log_w, pot, len, inv_eps, s, nan);
}
double scores_sse2(const double* c, const double* log_w, const double* pot, std::int64_t len,
                   double inv_eps, double* s, bool& nan) {
  return scores_kernel<v2d, v2i>(c, log_w, pot, len, inv_eps, s, nan);
}

ExpIsa best_isa() noexcept {
  static const ExpIsa isa = exp_isa_supported(ExpIsa::avx512) ? ExpIsa::avx512
                            : exp_isa_supported(ExpIsa::avx2) ? ExpIsa::avx2
                                                              : ExpIsa::sse2;
  return isa;
}

}  // namespace

double exp_det(double x) noexcept {
  if (x >= kFastMin && x <= kFastMax) {
    std::int64_t kp;
    const double y = reduced(x, kp);
    return from_bits(bits_of(y) + (kp << 52));
  }
  if (x != x) return x + x;
  if (x > 710.0) return std::numeric_limits<double>::infinity();
  if (x < -746.0) return 0.0;
  std::int64_t kp;
  const double y = reduced(x, kp);
  // Two steps, of which only the second rounds: y 2^(k'+-100) is exact and normal.
  if (kp > 0) return from_bits(bits_of(y) + ((kp - 100) << 52)) * 0x1p100;
  return from_bits(bits_of(y) + ((kp + 100) << 52)) * 0x1p-100;
}

bool exp_isa_supported(ExpIsa isa) noexcept {
  switch (isa) {
    case ExpIsa::avx512:
      return __builtin_cpu_supports("avx512f");
    case ExpIsa::avx2:
      return __builtin_cpu_supports("avx2");
    case ExpIsa::sse2:
      return true;
  }
  return false;
}

void exp_shifted_isa(ExpIsa isa, const double* in, std::int64_t len, double shift,
                     double* out) noexcept {
  switch (isa) {
    case ExpIsa::avx512:
      return shifted_avx512(in, len, shift, out);
    case ExpIsa::avx2:
      return shifted_avx2(in, len, shift, out);
    case ExpIsa::sse2:
      return shifted_sse2(in, len, shift, out);
  }
}

void expm1_det_isa(ExpIsa isa, const double* in, std::int64_t len, double* out) noexcept {
  // In blocks through a stack copy, so that in may equal out: the exp of the block
  // overwrites out, and the small |t| still need their argument.
  constexpr std::int64_t kBlock = 256;
  double t[kBlock];
  for (std::int64_t j0 = 0; j0 < len; j0 += kBlock) {
    const std::int64_t nb = std::min(kBlock, len - j0);
    std::memcpy(t, in + j0, static_cast<std::size_t>(nb) * sizeof(double));
    exp_shifted_isa(isa, t, nb, 0.0, out + j0);
    for (std::int64_t l = 0; l < nb; ++l) {
      // !(>=) sends NaN to std::expm1 as well (exp_det would give NaN too).
      out[j0 + l] = std::fabs(t[l]) >= kExpm1Cut ? out[j0 + l] - 1.0 : std::expm1(t[l]);
    }
  }
}

void expm1_det(const double* in, std::int64_t len, double* out) noexcept {
  expm1_det_isa(best_isa(), in, len, out);
}

ExpSums exp_sums_isa(ExpIsa isa, const double* s, const double* c, std::int64_t len, double mx,
                     double cut) noexcept {
  switch (isa) {
    case ExpIsa::avx512:
      return sums_avx512(s, c, len, mx, cut);
    case ExpIsa::avx2:
      return sums_avx2(s, c, len, mx, cut);
    case ExpIsa::sse2:
      return sums_sse2(s, c, len, mx, cut);
  }
  return {0.0, 0.0};
}

void exp_shifted(const double* in, std::int64_t len, double shift, double* out) noexcept {
  exp_shifted_isa(best_isa(), in, len, shift, out);
}

ExpSums exp_sums(const double* s, const double* c, std::int64_t len, double mx,
                 double cut) noexcept {
  return exp_sums_isa(best_isa(), s, c, len, mx, cut);
}

double lse_scores_isa(ExpIsa isa, const double* c, const double* log_w, const double* pot,
                      std::int64_t len, double inv_eps, double* s, bool& nan) noexcept {
  switch (isa) {
    case ExpIsa::avx512:
      return scores_avx512(c, log_w, pot, len, inv_eps, s, nan);
    case ExpIsa::avx2:
      return scores_avx2(c, log_w, pot, len, inv_eps, s, nan);
    case ExpIsa::sse2:
      return scores_sse2(c, log_w, pot, len, inv_eps, s, nan);
  }
  return 0.0;
}

double lse_scores(const double* c, const double* log_w, const double* pot, std::int64_t len,
                  double inv_eps, double* s, bool& nan) noexcept {
  return lse_scores_isa(best_isa(), c, log_w, pot, len, inv_eps, s, nan);
}

}  // namespace otgpu::cpu
