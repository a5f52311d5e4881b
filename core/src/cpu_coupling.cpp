// CPU reference of the coupling samplers: the joint draws from an entropic plan
// (with and without replacement) and the validation of couple()'s inputs.
#include "cpu_coupling.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <string>
#include <vector>

#include "cpu_cost.h"
#include "cpu_exp.h"
#include "cpu_numeric.h"
#include "cpu_problem.h"
#include "otgpu/detail/coupling_math.h"
#include "otgpu/error.h"

namespace otgpu::detail {

namespace {

void check_points(const TensorView& v, const char* name, const char* fn) {
  if (!v.present()) throw InvalidArgument(fmt::format("{}: {} is missing", fn, name));
  if (v.rank != 2 && v.rank != 3) {
    throw ShapeError(fmt::format("{}: {} must be [bs, d] or [K, bs, d], got rank {} ({})", fn, name,
                                 v.rank, v.describe()));
  }
  for (int k = 0; k < v.rank; ++k) {
    if (v.dim(k) <= 0) {
      throw ShapeError(fmt::format("{}: {} is empty: size {} in dimension {} of {}", fn, name,
                                   v.dim(k), k, v.describe()));
    }
    if (v.stride(k) < 0) {
      throw ShapeError(
          fmt::format("{}: {} has a negative stride {} in dimension {}", fn, name, v.stride(k), k));
    }
  }
  if (v.dtype != DType::f32 && v.dtype != DType::f64) {
    throw DTypeError(
        fmt::format("{}: {} has an unsupported dtype (float32 or float64 expected)", fn, name));
  }
  if (v.space != MemorySpace::host) return;  // device data is checked where it is read
  const std::int64_t d0 = v.dim(0), d1 = v.dim(1), d2 = v.rank == 3 ? v.dim(2) : 1;
  for (std::int64_t i0 = 0; i0 < d0; ++i0) {
    for (std::int64_t i1 = 0; i1 < d1; ++i1) {
      for (std::int64_t i2 = 0; i2 < d2; ++i2) {
        const double x = load_as_double(v, i0, i1, i2);
        if (!std::isfinite(x)) {
          throw NonFiniteInput(
              v.rank == 2
                  ? fmt::format("{}: {}: element [{}, {}] is {}", fn, name, i0, i1, x)
                  : fmt::format("{}: {}: element [{}, {}, {}] is {}", fn, name, i0, i1, i2, x));
        }
      }
    }
  }
}

}  // namespace

CouplingShape validate_coupling(const TensorView& x0, const TensorView& x1,
                                const CouplingOptions& options, const char* fn) {
  check_points(x0, "x0", fn);
  check_points(x1, "x1", fn);
  if (x0.rank != x1.rank) {
    throw ShapeError(fmt::format("{}: x0 {} and x1 {} must both be [bs, d] or both [K, bs, d]", fn,
                                 x0.describe(), x1.describe()));
  }
  if (x0.space != x1.space) {
    throw InvalidArgument(fmt::format("{}: x0 {} and x1 {} must be in the same memory space", fn,
                                      x0.describe(), x1.describe()));
  }
  CouplingShape s;
  const bool batched = x0.rank == 3;
  s.batch = batched ? x0.dim(0) : 1;
  s.bs0 = x0.dim(batched ? 1 : 0);
  s.bs1 = x1.dim(batched ? 1 : 0);
  s.d = x0.dim(batched ? 2 : 1);
  s.space = x0.space;
  if (batched && x1.dim(0) != s.batch) {
    throw ShapeError(
        fmt::format("{}: x0 has K = {} minibatches, x1 has {}", fn, s.batch, x1.dim(0)));
  }
  const std::int64_t d1 = x1.dim(batched ? 2 : 1);
  if (d1 != s.d) {
    throw ShapeError(fmt::format("{}: x0 has dimension d = {}, x1 has d = {}", fn, s.d, d1));
  }
  if (options.cost_kind == CostKind::matrix) {
    throw InvalidArgument(
        fmt::format("{}: cost_kind: must be sqeuclidean or euclidean, got matrix", fn));
  }
  if (options.method == CouplingMethod::exact) {
    if (s.bs0 != s.bs1) {
      throw ShapeError(fmt::format(
          "{}: method exact needs minibatches of equal size, got bs0 = {} (x0) and bs1 = {} (x1)",
          fn, s.bs0, s.bs1));
    }
    if (options.num_pairs != 0 && options.num_pairs != s.bs0) {
      throw InvalidArgument(
          fmt::format("{}: num_pairs: method exact returns the permutation (bs = {} pairs), got {}",
                      fn, s.bs0, options.num_pairs));
    }
  } else {
    if (!(options.eps > 0) || !std::isfinite(options.eps)) {
      throw InvalidArgument(
          fmt::format("{}: eps: must be finite and > 0, got {}", fn, options.eps));
    }
    if (options.method == CouplingMethod::unbalanced &&
        (!(options.rho > 0) || !std::isfinite(options.rho))) {
      throw InvalidArgument(fmt::format("{}: rho: method unbalanced needs a finite rho > 0, got {}",
                                        fn, options.rho));
    }
    if (options.num_pairs < 0) {
      throw InvalidArgument(
          fmt::format("{}: num_pairs: must be >= 0 (0 = bs0), got {}", fn, options.num_pairs));
    }
  }
  s.pairs = coupling_pairs(s.bs0, s.bs1, options);
  if (options.method != CouplingMethod::exact && options.pairs == CouplingPairs::joint &&
      !options.replacement && s.pairs > s.bs0 * s.bs1) {
    throw InvalidArgument(fmt::format(
        "{}: num_pairs: {} pairs without replacement exceed the bs0 * bs1 = {} * {} = {} entries "
        "of the plan",
        fn, s.pairs, s.bs0, s.bs1, s.bs0 * s.bs1));
  }
  return s;
}

SinkhornProblem coupling_problem(const TensorView& x0, const TensorView& x1,
                                 const CouplingOptions& options) {
  SinkhornProblem p;
  p.x = x0;
  p.y = x1;
  p.cost_kind = options.cost_kind;
  return p;
}

SinkhornOptions coupling_sinkhorn_options(const CouplingOptions& options) {
  SinkhornOptions o = options.sinkhorn;
  o.eps = options.eps;
  o.eps_relative = options.eps_relative;
  const double rho = options.method == CouplingMethod::unbalanced
                         ? options.rho
                         : std::numeric_limits<double>::infinity();
  o.rho_a = o.rho_b = rho;
  o.backend = options.backend;
  o.device = options.device;
  return o;
}

}  // namespace otgpu::detail

namespace otgpu::cpu {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace

/// The uniform behind detail::stream_gumbel(seed, problem, i, j): the same Philox block
/// and the same 32 bits, so that -log(-log(u)) gives its bits (pinned by a test).
double gumbel_uniform(std::uint64_t seed, std::uint64_t problem, std::uint64_t i,
                      std::uint64_t j) noexcept {
  const detail::Philox4 ctr{{static_cast<std::uint32_t>(j), static_cast<std::uint32_t>(j >> 32),
                             static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(problem)}};
  const detail::Philox4 r = detail::philox4x32_10(
      ctr, static_cast<std::uint32_t>(seed),
      static_cast<std::uint32_t>(seed >> 32) ^ static_cast<std::uint32_t>(i >> 32));
  return (static_cast<double>(r.v[0]) + 0.5) * (1.0 / 4294967296.0);
}

std::int64_t draw_column(const double* log_b, const double* g, const double* c, std::int64_t m,
                         double inv, std::uint64_t col_seed, std::uint64_t problem, std::uint64_t t,
                         double* a, double* thresh) {
  // The draw is argmax_j v_j, v_j = a_j + G_j, a_j = log b_j + (g_j - C_ij) / eps, G_j =
  // -log(-log u_j) (libm), the first j on ties, columns with b_j = 0 left out. The two
  // logs are spent only where they can matter: with L = v at argmax_j a_j (a lower
  // bound of max_j v_j), column j can reach L only if its exact Gumbel
  // -ln(-ln u_j) >= x_j = L - a_j - 1e-6 (1 + |L| + |a_j|) (the margin covers the
  // roundings of v_j and the libm logs, < 1e-13 in all), i.e. only if
  // u_j >= exp(-exp(-x_j)); that threshold computed by exp_det twice is within 2.3e-16
  // of its value (absolute: the error is e^-e (e + 1) 2^-52 with e = exp(-x_j)), so a
  // column with u_j < T_j - 1e-15 has v_j < L and cannot be the argmax. Its draw is
  // therefore the one of the plain scan, bit for bit, on every ISA.
  double amax = -kInf;
  std::int64_t jmax = -1;
  for (std::int64_t j = 0; j < m; ++j) {
    const double lb = log_b[j];
    a[j] = lb == -kInf ? -kInf : lb + (g[j] - c[j]) * inv;
    if (a[j] > amax) {
      amax = a[j];
      jmax = j;
    }
  }
  const auto gumbel_at = [&](std::int64_t j) {
    return -std::log(
        -std::log(gumbel_uniform(col_seed, problem, t, static_cast<std::uint64_t>(j))));
  };
  const double low = jmax >= 0 ? amax + gumbel_at(jmax) : -kInf;
  const bool prune = std::isfinite(low);
  if (prune) {
    for (std::int64_t j = 0; j < m; ++j) {
      const double x = low - a[j] - 1e-6 * (1.0 + std::fabs(low) + std::fabs(a[j]));
      thresh[j] = -x;
    }
    exp_shifted(thresh, m, 0.0, thresh);  // exp(-x_j)
    for (std::int64_t j = 0; j < m; ++j) thresh[j] = -thresh[j];
    exp_shifted(thresh, m, 0.0, thresh);  // exp(-exp(-x_j)); NaN x_j: NaN, never pruned
  }
  double best = -kInf;
  std::int64_t arg = -1;
  for (std::int64_t j = 0; j < m; ++j) {
    if (log_b[j] == -kInf) continue;
    const double u = gumbel_uniform(col_seed, problem, t, static_cast<std::uint64_t>(j));
    if (prune && u < thresh[j] - 1e-15) continue;
    const double v = a[j] + -std::log(-std::log(u));
    if (v > best) {
      best = v;
      arg = j;
    }
  }
  return arg;
}

namespace {

/// One problem's joint draws. s is a scratch row of length m.
void sample_problem(const ProblemData& p, const double* f, const double* g, double eps,
                    std::int64_t num_pairs, bool replacement, std::uint64_t seed,
                    std::int64_t* i_out, std::int64_t* j_out) {
  const std::int64_t n = p.n, m = p.m;
  const double inv = 1.0 / eps;
  std::vector<double> scratch(static_cast<std::size_t>(m)), s(static_cast<std::size_t>(m));
  const auto k = static_cast<std::uint64_t>(p.index);
  if (replacement) {
    // log r_i = log a_i + f_i / eps + LSE_j(log b_j + (g_j - C_ij) / eps): the row mass.
    std::vector<double> log_r(static_cast<std::size_t>(n));
    double top = -kInf;
    for (std::int64_t i = 0; i < n; ++i) {
      const double* c = p.cost_row(i, scratch.data());
      const RowLse l = row_lse(c, p.log_b.data(), g, m, inv, s.data(), false);
      const double lr = p.log_a[static_cast<std::size_t>(i)] + f[i] * inv + l.max + std::log(l.sum);
      log_r[static_cast<std::size_t>(i)] = lr;
      top = std::max(top, lr);
    }
    // Inverse CDF of r / sum(r): cdf_i = sum_{i' <= i} r_i' / r_max.
    std::vector<double> cdf(static_cast<std::size_t>(n));
    double acc = 0;
    std::int64_t last = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double w = std::exp(log_r[static_cast<std::size_t>(i)] - top);
      if (w > 0) last = i;
      acc += w;
      cdf[static_cast<std::size_t>(i)] = acc;
    }
    const std::uint64_t col_seed = detail::stream_seed(seed, detail::kStreamJointColumn);
    std::vector<double> thresh(static_cast<std::size_t>(m));
    for (std::int64_t t = 0; t < num_pairs; ++t) {
      const double u =
          detail::keyed_uniform(seed, detail::kStreamRowUniform, k, static_cast<std::uint64_t>(t)) *
          acc;
      auto it = std::upper_bound(cdf.begin(), cdf.end(), u);
      std::int64_t i = std::min<std::int64_t>(it - cdf.begin(), last);
      const double* c = p.cost_row(i, scratch.data());
      i_out[t] = i;
      j_out[t] = draw_column(p.log_b.data(), g, c, m, inv, col_seed, k,
                             static_cast<std::uint64_t>(t), s.data(), thresh.data());
    }
    return;
  }
  // Without replacement: the num_pairs largest keys log P_ij + G_ij (Gumbel-top-k),
  // held in a min-heap; ties in the key go to the smaller linear index i * m + j.
  struct Entry {
    double key;
    std::int64_t e;
  };
  auto better = [](const Entry& x, const Entry& y) {
    return x.key > y.key || (x.key == y.key && x.e < y.e);
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(better)> heap(better);
  const std::uint64_t key_seed = detail::stream_seed(seed, detail::kStreamTopK);
  for (std::int64_t i = 0; i < n; ++i) {
    const double la = p.log_a[static_cast<std::size_t>(i)];
    if (la == -kInf) continue;
    const double* c = p.cost_row(i, scratch.data());
    for (std::int64_t j = 0; j < m; ++j) {
      const double lb = p.log_b[static_cast<std::size_t>(j)];
      if (lb == -kInf) continue;
      const Entry x{la + lb + (f[i] + g[j] - c[j]) * inv +
                        detail::stream_gumbel(key_seed, k, static_cast<std::uint64_t>(i),
                                              static_cast<std::uint64_t>(j)),
                    i * m + j};
      if (static_cast<std::int64_t>(heap.size()) < num_pairs) {
        heap.push(x);
      } else if (better(x, heap.top())) {
        heap.pop();
        heap.push(x);
      }
    }
  }
  std::vector<std::int64_t> chosen;
  chosen.reserve(heap.size());
  while (!heap.empty()) {
    chosen.push_back(heap.top().e);
    heap.pop();
  }
  std::sort(chosen.begin(), chosen.end());
  for (std::int64_t t = 0; t < num_pairs; ++t) {
    const bool have = t < static_cast<std::int64_t>(chosen.size());
    i_out[t] = have ? chosen[static_cast<std::size_t>(t)] / m : -1;
    j_out[t] = have ? chosen[static_cast<std::size_t>(t)] % m : -1;
  }
}

}  // namespace

void sample_joint_pairs(const SinkhornProblem& problem, const SinkhornResult& result,
                        const detail::SinkhornShape& shape, std::int64_t num_pairs,
                        bool replacement, std::uint64_t seed, std::int64_t* i_out,
                        std::int64_t* j_out) {
  const std::int64_t B = shape.batch, n = shape.n, m = shape.m;
  const int threads = std::max(1, std::min<int>(resolve_threads(0), static_cast<int>(B)));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t b = 0; b < B; ++b) {
    // Weights as given: couple()'s are uniform with unit masses, so the rescaling of a
    // balanced solve changes nothing.
    const ProblemData p = load_problem(problem, shape, b, false, kMaxDenseCostBytes, 1);
    sample_problem(p, result.f.data() + b * n, result.g.data() + b * m,
                   result.problems[static_cast<std::size_t>(b)].eps, num_pairs, replacement, seed,
                   i_out + b * num_pairs, j_out + b * num_pairs);
  }
}

std::vector<double> point_cost_matrices(const TensorView& x0, const TensorView& x1, CostKind kind,
                                        const detail::CouplingShape& shape) {
  const std::int64_t K = shape.batch, n = shape.bs0, m = shape.bs1, d = shape.d;
  const bool batched = x0.rank == 3;
  std::vector<double> out(static_cast<std::size_t>(K * n * m));
  StagedPoints pts;
  pts.n = n;
  pts.m = m;
  pts.d = d;
  pts.kind = kind;
  pts.x.resize(static_cast<std::size_t>(n * d));
  pts.y.resize(static_cast<std::size_t>(m * d));
  const int threads = threads_for_work(resolve_threads(0), n * m * d);
  const bool gram = choose_cost_form(kind, d) == CostForm::gram;
  for (std::int64_t b = 0; b < K; ++b) {
    stage_rows(x0, batched, b, n, d, pts.x.data());
    stage_rows(x1, batched, b, m, d, pts.y.data());
    double* c = out.data() + b * n * m;
    if (gram) {
      (void)cost_gram(pts, c, threads);
    } else {
      cost_direct(pts, c, threads);
    }
  }
  return out;
}

std::vector<double> mean_pair_cost(const SinkhornProblem& problem,
                                   const detail::SinkhornShape& shape, std::int64_t pairs,
                                   const std::int64_t* i, const std::int64_t* j) {
  std::vector<double> out(static_cast<std::size_t>(shape.batch), 0.0);
  for (std::int64_t b = 0; b < shape.batch; ++b) {
    const ProblemData p = load_problem(problem, shape, b, false, 0, 1);
    CompensatedSum sum;
    std::int64_t count = 0;
    for (std::int64_t t = 0; t < pairs; ++t) {
      const std::int64_t ii = i[b * pairs + t], jj = j[b * pairs + t];
      if (ii < 0 || jj < 0) continue;
      sum.add(p.cost_at(ii, jj));
      ++count;
    }
    out[static_cast<std::size_t>(b)] = count > 0 ? sum.value() / static_cast<double>(count) : 0.0;
  }
  return out;
}

}  // namespace otgpu::cpu
