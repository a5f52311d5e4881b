// Dense point-cloud costs of the CPU assignment reference (cpu_cost.h).
//
// The Gram kernel: C = X Y^T with X [n, d], Y [m, d] row-major. X is packed into
// panels of MR rows stored coordinate-major, Y into panels of NR rows, both
// block-major over k ([k block][panel][k][MR or NR], zero-padded); an MR x NR tile
// of C lives in MR x NV vector registers (NR = NV vectors of lanes) and takes, per
// coordinate k, NV loads of Y, MR scalar broadcasts of X and MR x NV multiply-adds.
// Loops, outer to inner: column chunks of kNc (a chunk's Y panels for one k block,
// kNc x kKc x 8 B = 512 KiB, stay in L2), k blocks of kKc (an X panel's block,
// MR x kKc x 8 B <= 16 KiB, stays in L1), the thread's row panels, the chunk's
// column panels. Each thread owns a contiguous range of row panels: no barrier inside.
//
// Three builds of the tile loop are compiled (AVX-512F: 8 x 16, AVX2 + FMA: 6 x 8, the
// baseline SSE2: 4 x 4) and one is picked at run time. Every build sums the products
// of an entry in the same order; the AVX builds fuse multiply and add (GCC contracts
// by default in C++), so their last bits can differ from the baseline's, which is
// why the certificate's bound covers any of them.
#include "cpu_cost.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string_view>
#include <vector>

#include "cpu_numeric.h"
#include "otgpu/error.h"

namespace otgpu::cpu {

namespace {

typedef double v2d __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

constexpr std::int64_t kKc = 256;  // coordinates per k block
constexpr std::int64_t kNc = 256;  // columns per chunk

/// One MR x NR tile: c[r, q] (row stride ldc) = (accumulate ? c[r, q] : 0) +
/// sum_k xp[k MR + r] yp[k NR + q] over kc coordinates; rows x cols of it are stored.
template <class V, int MR, int NV>
[[gnu::always_inline]] inline void tile(const double* __restrict xp, const double* __restrict yp,
                                        std::int64_t kc, double* __restrict c, std::int64_t ldc,
                                        bool accumulate, std::int64_t rows, std::int64_t cols) {
  constexpr int W = static_cast<int>(sizeof(V) / sizeof(double));
  constexpr int NR = NV * W;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  }
  for (std::int64_t k = 0; k < kc; ++k) {
    V yv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(&yv[v], yp + k * NR + v * W, sizeof(V));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const double xs = xp[k * MR + r];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += xs * yv[v];
    }
  }
  if (rows == MR && cols == NR) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        double* dst = c + r * ldc + v * W;
        V o = acc[r][v];
        if (accumulate) {
          V prev;
          std::memcpy(&prev, dst, sizeof(V));
          o = prev + o;
        }
        std::memcpy(dst, &o, sizeof(V));
      }
    }
    return;
  }
  double t[MR][NR];
  std::memcpy(t, acc, sizeof(t));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t q = 0; q < cols; ++q) {
      double& dst = c[r * ldc + q];
      dst = accumulate ? dst + t[r][q] : t[r][q];
    }
  }
}

/// Row panels [p0, p1) of C against every column panel (see the file comment).
template <class V, int MR, int NV>
[[gnu::always_inline]] inline void panels(const double* xp, const double* yp, std::int64_t n,
                                          std::int64_t m, std::int64_t d, double* out,
                                          std::int64_t p0, std::int64_t p1) {
  constexpr std::int64_t NR = NV * static_cast<std::int64_t>(sizeof(V) / sizeof(double));
  const std::int64_t xpanels = (n + MR - 1) / MR, ypanels = (m + NR - 1) / NR;
  for (std::int64_t j0 = 0; j0 < m; j0 += kNc) {
    const std::int64_t j1 = std::min(m, j0 + kNc);
    for (std::int64_t k0 = 0; k0 < d; k0 += kKc) {
      const std::int64_t kc = std::min(kKc, d - k0);
      for (std::int64_t p = p0; p < p1; ++p) {
        const std::int64_t i = p * MR;
        const double* xb = xp + k0 * xpanels * MR + p * kc * MR;
        for (std::int64_t j = j0; j < j1; j += NR) {
          const double* yb = yp + k0 * ypanels * NR + (j / NR) * kc * NR;
          tile<V, MR, NV>(xb, yb, kc, out + i * m + j, m, k0 > 0, std::min<std::int64_t>(MR, n - i),
                          std::min<std::int64_t>(NR, m - j));
        }
      }
    }
  }
}

using PanelFn = void (*)(const double*, const double*, std::int64_t, std::int64_t, std::int64_t,
                         double*, std::int64_t, std::int64_t);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
[[gnu::target("avx512f")]] void panels_avx512(const double* xp, const double* yp, std::int64_t n,
                                              std::int64_t m, std::int64_t d, double* out,
                                              std::int64_t p0, std::int64_t p1) {
  panels<v8d, 8, 2>(xp, yp, n, m, d, out, p0, p1);
}
[[gnu::target("avx2,fma")]] void panels_avx2(const double* xp, const double* yp, std::int64_t n,
                                             std::int64_t m, std::int64_t d, double* out,
                                             std::int64_t p0, std::int64_t p1) {
  panels<v4d, 6, 2>(xp, yp, n, m, d, out, p0, p1);
}
#endif
void panels_base(const double* xp, const double* yp, std::int64_t n, std::int64_t m, std::int64_t d,
                 double* out, std::int64_t p0, std::int64_t p1) {
  panels<v2d, 4, 2>(xp, yp, n, m, d, out, p0, p1);
}

struct Kernel {
  PanelFn fn;
  std::int64_t mr, nr;
};

Kernel pick_kernel() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx512f")) return {panels_avx512, 8, 16};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {panels_avx2, 6, 8};
#endif
  return {panels_base, 4, 4};
}

/// a [rows, d] row-major (minus `shift` [d] when given, each difference rounded once)
/// into panels of `w` rows, block-major over k: block k0 / kKc starts at k0 P w (P =
/// rows rounded up to w) and holds the panels one after the other, each [kc][w] (kc =
/// the block's length), the last panel zero-padded. A block's panels are contiguous:
/// panels d w apart (a multiple of a large power of two at d = 3072) share cache sets.
/// norms [rows], when given, receives each packed row's squared norm (k order), so
/// that no other pass over the points computes it.
std::unique_ptr<double[]> pack(const double* a, std::int64_t rows, std::int64_t d, std::int64_t w,
                               const double* shift, int threads, double* norms) {
  const std::int64_t np = (rows + w - 1) / w;
  // Every element is written below (padding included): no zero-fill.
  std::unique_ptr<double[]> out(new double[static_cast<std::size_t>(np * d * w)]);
  double* base = out.get();
  // Panels over threads (disjoint writes); row by row within a panel's k block:
  // contiguous reads, strided writes within its kc x w block (<= 32 KiB, L1-resident).
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (std::int64_t p = 0; p < np; ++p) {
    for (std::int64_t k0 = 0; k0 < d; k0 += kKc) {
      const std::int64_t kc = std::min(kKc, d - k0);
      double* dst = base + k0 * np * w + p * kc * w;
      for (std::int64_t r = 0; r < w; ++r) {
        const std::int64_t i = p * w + r;
        if (i >= rows) {
          for (std::int64_t k = 0; k < kc; ++k) dst[k * w + r] = 0.0;
          continue;
        }
        const double* src = a + i * d + k0;
        if (shift != nullptr) {
          for (std::int64_t k = 0; k < kc; ++k) dst[k * w + r] = src[k] - shift[k0 + k];
        } else {
          for (std::int64_t k = 0; k < kc; ++k) dst[k * w + r] = src[k];
        }
        if (norms != nullptr) {
          double s2 = k0 == 0 ? 0.0 : norms[i];
          for (std::int64_t k = 0; k < kc; ++k) s2 += dst[k * w + r] * dst[k * w + r];
          norms[i] = s2;
        }
      }
    }
  }
  return out;
}

double gamma(std::int64_t k) {
  const double u = std::numeric_limits<double>::epsilon() / 2;
  const double ku = static_cast<double>(k) * u;
  return ku / (1 - ku);
}

double squared_norm(const double* a, std::int64_t d) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t k = 0; k < d; ++k) s += a[k] * a[k];
  return s;
}

}  // namespace

CostForm choose_cost_form(CostKind kind, std::int64_t d) {
  (void)kind;
  if (const char* e = std::getenv("OTGPU_CPU_COST")) {
    const std::string_view v(e);
    if (v == "direct") return CostForm::direct;
    if (v == "gram") return CostForm::gram;
    if (!v.empty()) {
      throw InvalidArgument(
          fmt::format("OTGPU_CPU_COST: unknown value '{}' (direct, gram, or unset)", v));
    }
  }
  return d >= kGramMinDim ? CostForm::gram : CostForm::direct;
}

void gram_nt(const double* x, const double* y, std::int64_t n, std::int64_t m, std::int64_t d,
             double* out, int threads, const double* shift, double* x_norms, double* y_norms) {
  static const Kernel kernel = pick_kernel();
  const std::unique_ptr<double[]> xp = pack(x, n, d, kernel.mr, shift, threads, x_norms);
  const std::unique_ptr<double[]> yp = pack(y, m, d, kernel.nr, shift, threads, y_norms);
  const std::int64_t np = (n + kernel.mr - 1) / kernel.mr;
  const int t = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(threads, np)));
#pragma omp parallel num_threads(t)
  {
    const std::int64_t id = omp_get_thread_num(), team = omp_get_num_threads();
    const std::int64_t p0 = np * id / team, p1 = np * (id + 1) / team;
    if (p0 < p1) kernel.fn(xp.get(), yp.get(), n, m, d, out, p0, p1);
  }
}

void stage_rows(const TensorView& v, bool batched, std::int64_t b, std::int64_t rows,
                std::int64_t d, double* out) {
  const bool runs = v.stride(v.rank - 1) == 1 && (v.dtype == DType::f32 || v.dtype == DType::f64);
  const std::int64_t base = batched ? b * v.stride(0) : 0, rs = v.stride(v.rank - 2);
  for (std::int64_t i = 0; i < rows; ++i) {
    double* o = out + i * d;
    if (runs && v.dtype == DType::f64) {
      const double* src = static_cast<const double*>(v.data) + base + i * rs;
      std::copy(src, src + d, o);
    } else if (runs) {
      const float* src = static_cast<const float*>(v.data) + base + i * rs;
      for (std::int64_t k = 0; k < d; ++k) o[k] = static_cast<double>(src[k]);
    } else {
      for (std::int64_t k = 0; k < d; ++k) o[k] = load_problem_element(v, batched, b, i, k);
    }
  }
}

double pair_cost(const StagedPoints& p, std::int64_t i, std::int64_t j) {
  const double* xi = p.x.data() + i * p.d;
  const double* yj = p.y.data() + j * p.d;
  double s = 0;
  if (p.kind == CostKind::neg_dot) {
#pragma omp simd reduction(+ : s)
    for (std::int64_t k = 0; k < p.d; ++k) s += xi[k] * yj[k];
    return -s;
  }
#pragma omp simd reduction(+ : s)
  for (std::int64_t k = 0; k < p.d; ++k) {
    const double t = xi[k] - yj[k];
    s += t * t;
  }
  return p.kind == CostKind::euclidean ? std::sqrt(s) : s;
}

void cost_direct(const StagedPoints& p, double* out, int threads) {
  const std::int64_t n = p.n, m = p.m, d = p.d;
  // Rows in blocks of kRows share each read of y_j (a row of y at d = 3072 is 24 KB;
  // re-reading all of y for every row is memory-bound); each pair keeps its own sum.
  constexpr std::int64_t kRows = 4;
  const bool dot = p.kind == CostKind::neg_dot;
  const bool root = p.kind == CostKind::euclidean;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t i0 = 0; i0 < n; i0 += kRows) {
    const std::int64_t rows = std::min(kRows, n - i0);
    const double* x0 = p.x.data() + i0 * d;
    const double* x1 = x0 + (rows > 1 ? d : 0);
    const double* x2 = x0 + (rows > 2 ? 2 * d : 0);
    const double* x3 = x0 + (rows > 3 ? 3 * d : 0);
    for (std::int64_t j = 0; j < m; ++j) {
      const double* yj = p.y.data() + j * d;
      double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      if (dot) {
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (std::int64_t k = 0; k < d; ++k) {
          a0 += x0[k] * yj[k];
          a1 += x1[k] * yj[k];
          a2 += x2[k] * yj[k];
          a3 += x3[k] * yj[k];
        }
      } else {
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (std::int64_t k = 0; k < d; ++k) {
          const double t0 = x0[k] - yj[k], t1 = x1[k] - yj[k];
          const double t2 = x2[k] - yj[k], t3 = x3[k] - yj[k];
          a0 += t0 * t0;
          a1 += t1 * t1;
          a2 += t2 * t2;
          a3 += t3 * t3;
        }
      }
      const double acc[kRows] = {a0, a1, a2, a3};
      for (std::int64_t r = 0; r < rows; ++r) {
        const double c = acc[r];
        out[(i0 + r) * m + j] = dot ? -c : (root ? std::sqrt(c) : c);
      }
    }
  }
}

double cost_gram(const StagedPoints& p, double* out, int threads) {
  const std::int64_t n = p.n, m = p.m, d = p.d;
  if (p.kind == CostKind::neg_dot) {
    gram_nt(p.x.data(), p.y.data(), n, m, d, out, threads);
    double mx = 0, my = 0;
    for (std::int64_t i = 0; i < n; ++i) mx = std::max(mx, squared_norm(p.x.data() + i * d, d));
    for (std::int64_t j = 0; j < m; ++j) my = std::max(my, squared_norm(p.y.data() + j * d, d));
    for (std::int64_t e = 0; e < n * m; ++e) out[e] = -out[e];
    return 2 * gamma(d + 2) * std::sqrt(mx) * std::sqrt(my);
  }
  // The shift t: the mean of all points, summed per coordinate in point order.
  std::vector<double> t(static_cast<std::size_t>(d), 0.0);
  for (const std::vector<double>* pts : {&p.x, &p.y}) {
    const std::int64_t rows = pts == &p.x ? n : m;
    for (std::int64_t i = 0; i < rows; ++i) {
      const double* a = pts->data() + i * d;
      double* tk = t.data();
#pragma omp simd
      for (std::int64_t k = 0; k < d; ++k) tk[k] += a[k];
    }
  }
  for (double& v : t) v /= static_cast<double>(n + m);
  // |x_i - t|^2 and |y_j - t|^2 from the packed (shifted, rounded) coordinates.
  std::vector<double> nx(static_cast<std::size_t>(n)), ny(static_cast<std::size_t>(m));
  gram_nt(p.x.data(), p.y.data(), n, m, d, out, threads, t.data(), nx.data(), ny.data());
  const double mx = *std::max_element(nx.begin(), nx.end());
  const double my = *std::max_element(ny.begin(), ny.end());
  const bool root = p.kind == CostKind::euclidean;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t i = 0; i < n; ++i) {
    double* oi = out + i * m;
    const double a = nx[static_cast<std::size_t>(i)];
    for (std::int64_t j = 0; j < m; ++j) {
      const double c = std::max(0.0, (a + ny[static_cast<std::size_t>(j)]) - 2 * oi[j]);
      oi[j] = root ? std::sqrt(c) : c;
    }
  }
  const double r = std::sqrt(mx) + std::sqrt(my);
  const double delta = 2 * gamma(d + 8) * r * r;
  return root ? std::sqrt(delta) : delta;
}

}  // namespace otgpu::cpu
