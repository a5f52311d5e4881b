// CPU pieces of the minibatch OT estimator: the keyed minibatch draws, validation,
// gathers and the matched-cost gradient.
#include "cpu_minibatch.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "otgpu/detail/coupling_math.h"
#include "otgpu/error.h"

namespace otgpu {

std::vector<std::int64_t> minibatch_rows(std::int64_t N, std::int64_t bs, std::int64_t K,
                                         std::uint64_t seed, int stream) {
  if (N < 1 || bs < 1 || bs > N || K < 1) {
    throw InvalidArgument(fmt::format(
        "minibatch_rows: needs 1 <= bs <= N and K >= 1, got N = {}, bs = {}, K = {}", N, bs, K));
  }
  const std::uint32_t tag = stream == 0 ? detail::kStreamMinibatchX : detail::kStreamMinibatchY;
  std::vector<std::int64_t> out(static_cast<std::size_t>(K * bs));
  std::vector<std::pair<std::uint64_t, std::int64_t>> keys(static_cast<std::size_t>(N));
  for (std::int64_t k = 0; k < K; ++k) {
    // The bs smallest of N independent uniform keys are a uniform bs-subset.
    for (std::int64_t p = 0; p < N; ++p) {
      keys[static_cast<std::size_t>(p)] = {
          detail::keyed_bits(seed, tag, static_cast<std::uint64_t>(k),
                             static_cast<std::uint64_t>(p)),
          p};
    }
    std::nth_element(keys.begin(), keys.begin() + (bs - 1), keys.end());
    auto* row = out.data() + k * bs;
    for (std::int64_t t = 0; t < bs; ++t) row[t] = keys[static_cast<std::size_t>(t)].second;
    std::sort(row, row + bs);
  }
  return out;
}

}  // namespace otgpu

namespace otgpu::cpu {

namespace {

void check_cloud(const TensorView& v, const char* name) {
  if (!v.present()) throw InvalidArgument(fmt::format("minibatch_ot: {} is missing", name));
  if (v.rank != 2) {
    throw ShapeError(fmt::format("minibatch_ot: {} must be [N, d], got {}", name, v.describe()));
  }
  if (v.dim(0) <= 0 || v.dim(1) <= 0) {
    throw ShapeError(fmt::format("minibatch_ot: {} is empty ({})", name, v.describe()));
  }
  if (v.space != MemorySpace::host) {
    throw InvalidArgument(fmt::format(
        "minibatch_ot: {} must be in host memory (the batches are gathered on the host)", name));
  }
  if (v.dtype != DType::f32 && v.dtype != DType::f64) {
    throw DTypeError(fmt::format("minibatch_ot: {}: float32 or float64 expected", name));
  }
  for (std::int64_t i = 0; i < v.dim(0); ++i) {
    for (std::int64_t c = 0; c < v.dim(1); ++c) {
      const double x = load_as_double(v, i, c);
      if (!std::isfinite(x)) {
        throw NonFiniteInput(
            fmt::format("minibatch_ot: {}: element [{}, {}] is {}", name, i, c, x));
      }
    }
  }
}

}  // namespace

MinibatchShape validate_minibatch(const TensorView& x, const TensorView& y,
                                  const MinibatchOptions& o) {
  check_cloud(x, "x");
  check_cloud(y, "y");
  MinibatchShape s{x.dim(0), y.dim(0), x.dim(1)};
  if (y.dim(1) != s.d) {
    throw ShapeError(
        fmt::format("minibatch_ot: x has dimension d = {}, y has d = {}", s.d, y.dim(1)));
  }
  if (o.k < 1) throw InvalidArgument(fmt::format("minibatch_ot: k: must be >= 1, got {}", o.k));
  if (o.bs < 1) throw InvalidArgument(fmt::format("minibatch_ot: bs: must be >= 1, got {}", o.bs));
  if (o.bs > s.N || o.bs > s.M) {
    throw ShapeError(fmt::format(
        "minibatch_ot: bs: {} exceeds the points available (x has N = {}, y has M = {}); batches "
        "are drawn without replacement",
        o.bs, s.N, s.M));
  }
  if (o.cost_kind == CostKind::matrix) {
    throw InvalidArgument("minibatch_ot: cost_kind: must be sqeuclidean or euclidean, got matrix");
  }
  if (o.method == MinibatchMethod::exact && o.debiased) {
    throw InvalidArgument("minibatch_ot: debiased: applies to method sinkhorn only, not exact");
  }
  if (o.method == MinibatchMethod::sinkhorn && (!(o.eps > 0) || !std::isfinite(o.eps))) {
    throw InvalidArgument(fmt::format("minibatch_ot: eps: must be finite and > 0, got {}", o.eps));
  }
  return s;
}

std::vector<double> gather_rows(const TensorView& v, const std::vector<std::int64_t>& rows,
                                std::int64_t d) {
  std::vector<double> out(rows.size() * static_cast<std::size_t>(d));
  for (std::size_t r = 0; r < rows.size(); ++r) {
    for (std::int64_t c = 0; c < d; ++c) {
      out[r * static_cast<std::size_t>(d) + static_cast<std::size_t>(c)] =
          load_as_double(v, rows[r], c);
    }
  }
  return out;
}

double point_pair_cost(CostKind kind, const double* x, const double* y, std::int64_t d) {
  double s = 0;
  for (std::int64_t c = 0; c < d; ++c) s += (x[c] - y[c]) * (x[c] - y[c]);
  return kind == CostKind::euclidean ? std::sqrt(s) : s;
}

void add_cost_gradient(CostKind kind, const double* x, const double* y, std::int64_t d,
                       double scale, double* out) {
  if (kind == CostKind::sqeuclidean) {
    for (std::int64_t c = 0; c < d; ++c) out[c] += scale * 2.0 * (x[c] - y[c]);
    return;
  }
  const double r = point_pair_cost(CostKind::euclidean, x, y, d);
  if (!(r > 0)) return;  // the subgradient 0 at x = y
  for (std::int64_t c = 0; c < d; ++c) out[c] += scale * (x[c] - y[c]) / r;
}

}  // namespace otgpu::cpu
