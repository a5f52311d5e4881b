#include "sliced_validate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "otgpu/detail/directions.h"
#include "otgpu/error.h"

namespace otgpu::detail {

namespace {

void check_strides(const TensorView& v, std::string_view fn, std::string_view name) {
  for (int k = 0; k < v.rank; ++k) {
    if (v.stride(k) < 0) {
      throw ShapeError(fmt::format("{}: {} has a negative stride {} in dimension {} ({})", fn, name,
                                   v.stride(k), k, v.describe()));
    }
  }
}

std::string index_text(const TensorView& v, std::int64_t i0, std::int64_t i1, std::int64_t i2) {
  if (v.rank == 1) return fmt::format("[{}]", i0);
  if (v.rank == 2) return fmt::format("[{}, {}]", i0, i1);
  return fmt::format("[{}, {}, {}]", i0, i1, i2);
}

/// Host data only: every element finite.
void check_finite(const TensorView& v, std::string_view fn, std::string_view name) {
  const std::int64_t d0 = v.dim(0), d1 = v.rank > 1 ? v.dim(1) : 1, d2 = v.rank > 2 ? v.dim(2) : 1;
  for (std::int64_t i0 = 0; i0 < d0; ++i0)
    for (std::int64_t i1 = 0; i1 < d1; ++i1)
      for (std::int64_t i2 = 0; i2 < d2; ++i2) {
        const double x = load_as_double(v, i0, i1, i2);
        if (!std::isfinite(x)) {
          throw NonFiniteInput(fmt::format("{}: {} holds a non-finite value ({}) at {}", fn, name,
                                           x, index_text(v, i0, i1, i2)));
        }
      }
}

/// Host weights [n] or [B, n]: finite, non-negative, positive finite mass per row.
void check_weights(const TensorView& w, std::string_view fn, std::string_view name) {
  const std::int64_t rows = w.rank == 2 ? w.dim(0) : 1;
  const std::int64_t len = w.rank == 2 ? w.dim(1) : w.dim(0);
  for (std::int64_t r = 0; r < rows; ++r) {
    double total = 0;
    for (std::int64_t i = 0; i < len; ++i) {
      const double x = w.rank == 2 ? load_as_double(w, r, i) : load_as_double(w, i);
      const std::string at = w.rank == 2 ? fmt::format("[{}, {}]", r, i) : fmt::format("[{}]", i);
      if (!std::isfinite(x)) {
        throw NonFiniteInput(
            fmt::format("{}: {} holds a non-finite weight ({}) at {}", fn, name, x, at));
      }
      if (x < 0) {
        throw NonFiniteInput(
            fmt::format("{}: {} holds a negative weight ({}) at {}", fn, name, x, at));
      }
      total += x;
    }
    if (!(total > 0) || !std::isfinite(total)) {
      throw InvalidArgument(
          fmt::format("{}: {} must have positive finite total mass, got {}{}", fn, name, total,
                      w.rank == 2 ? fmt::format(" in problem {}", r) : std::string()));
    }
  }
}

/// a: absent, [n] (shared) or [B, n]. Returns true when batched.
bool check_weight_shape(const TensorView& w, std::int64_t batch, std::int64_t len,
                        std::string_view fn, std::string_view name, std::string_view len_name) {
  if (!w.present()) return false;
  check_strides(w, fn, name);
  if (w.rank == 1 && w.dim(0) == len) return false;
  if (w.rank == 2 && w.dim(0) == batch && w.dim(1) == len) return true;
  throw ShapeError(fmt::format("{}: {} must be [{}] or [B, {}] with B = {}, {} = {}; got {}", fn,
                               name, len_name, len_name, batch, len_name, len, w.describe()));
}

}  // namespace

SlicedShape validate_sliced(const SlicedProblem& problem, const SlicedOptions& options,
                            std::string_view fn) {
  const TensorView& x = problem.x;
  const TensorView& y = problem.y;
  if (!x.present()) throw InvalidArgument(fmt::format("{}: x is missing", fn));
  if (!y.present()) throw InvalidArgument(fmt::format("{}: y is missing", fn));
  if (x.rank != 2 && x.rank != 3) {
    throw ShapeError(fmt::format("{}: x must be [n, d] or [B, n, d], got {}", fn, x.describe()));
  }
  if (y.rank != x.rank) {
    throw ShapeError(fmt::format("{}: y must have the rank of x ({}), got {} (x is {})", fn, x.rank,
                                 y.describe(), x.describe()));
  }
  check_strides(x, fn, "x");
  check_strides(y, fn, "y");
  SlicedShape s;
  const int o = x.rank == 3 ? 1 : 0;
  s.batch = x.rank == 3 ? x.dim(0) : 1;
  s.n = x.dim(o);
  s.d = x.dim(o + 1);
  s.m = y.dim(o);
  const std::int64_t yb = y.rank == 3 ? y.dim(0) : 1;
  if (s.batch < 1 || s.n < 1 || s.d < 1) {
    throw ShapeError(fmt::format("{}: x must have B, n, d >= 1, got {}", fn, x.describe()));
  }
  if (yb != s.batch || y.dim(o + 1) != s.d || s.m < 1) {
    throw ShapeError(
        fmt::format("{}: y must be [B, m, d] with B = {} and d = {} (from x {}), m >= 1; got {}",
                    fn, s.batch, s.d, x.describe(), y.describe()));
  }
  s.a_batched = check_weight_shape(problem.a, s.batch, s.n, fn, "a", "n");
  s.b_batched = check_weight_shape(problem.b, s.batch, s.m, fn, "b", "m");

  s.space = x.space;
  auto same_space = [&](const TensorView& v, std::string_view name) {
    if (v.present() && v.space != s.space) {
      throw InvalidArgument(fmt::format(
          "{}: {} is in {} memory but x is in {} memory; all tensors must be in one space", fn,
          name, v.space == MemorySpace::host ? "host" : "device",
          s.space == MemorySpace::host ? "host" : "device"));
    }
  };
  same_space(y, "y");
  same_space(problem.a, "a");
  same_space(problem.b, "b");
  same_space(options.directions, "directions");

  if (!(options.p >= 1.0) || !std::isfinite(options.p)) {
    throw InvalidArgument(fmt::format("{}: p must be finite and >= 1, got {}", fn, options.p));
  }
  if (options.cpu_threads < 0) {
    throw InvalidArgument(
        fmt::format("{}: cpu_threads must be >= 0, got {}", fn, options.cpu_threads));
  }
  const TensorView& dir = options.directions;
  if (dir.present()) {
    check_strides(dir, fn, "directions");
    if (dir.rank != 2 || dir.dim(0) != s.d || dir.dim(1) < 1) {
      throw ShapeError(fmt::format("{}: directions must be [d, L] with d = {} and L >= 1, got {}",
                                   fn, s.d, dir.describe()));
    }
    if (dir.dim(1) > std::numeric_limits<int>::max()) {
      throw ShapeError(fmt::format("{}: directions has too many columns ({})", fn, dir.dim(1)));
    }
    s.projections = dir.dim(1);
  } else {
    if (options.projections < 1) {
      throw InvalidArgument(
          fmt::format("{}: projections must be >= 1, got {}", fn, options.projections));
    }
    s.projections = options.projections;
  }

  if (s.space == MemorySpace::host) {
    check_finite(x, fn, "x");
    check_finite(y, fn, "y");
    if (problem.a.present()) check_weights(problem.a, fn, "a");
    if (problem.b.present()) check_weights(problem.b, fn, "b");
    if (dir.present()) {
      check_finite(dir, fn, "directions");
      for (std::int64_t l = 0; l < s.projections; ++l) {
        double sq = 0;
        for (std::int64_t k = 0; k < s.d; ++k) {
          const double t = load_as_double(dir, k, l);
          sq += t * t;
        }
        if (!(sq > 0)) {
          throw InvalidArgument(fmt::format(
              "{}: directions column {} has zero norm (a direction must be non-zero)", fn, l));
        }
      }
    }
  }
  return s;
}

std::vector<double> host_directions(const SlicedOptions& options, const SlicedShape& shape) {
  const std::int64_t d = shape.d, L = shape.projections;
  std::vector<double> theta(static_cast<std::size_t>(d * L));
  for (std::int64_t l = 0; l < L; ++l) {
    double sq = 0;
    for (std::int64_t k = 0; k < d; ++k) {
      const double t = options.directions.present()
                           ? load_as_double(options.directions, k, l)
                           : direction_gaussian(options.seed, static_cast<std::uint64_t>(l),
                                                static_cast<std::uint64_t>(k));
      theta[static_cast<std::size_t>(k * L + l)] = t;
      sq += t * t;
    }
    // A drawn Gaussian vector is zero with probability 0; keep it zero rather than NaN.
    const double inv = sq > 0 ? 1.0 / std::sqrt(sq) : 0.0;
    for (std::int64_t k = 0; k < d; ++k) theta[static_cast<std::size_t>(k * L + l)] *= inv;
  }
  return theta;
}

void finalize_sliced_value(SlicedResult& r, const SlicedOptions& options) {
  const auto B = static_cast<std::size_t>(r.batch);
  const auto L = static_cast<std::size_t>(r.projections);
  r.value_pp.assign(B, 0.0);
  r.value.assign(B, 0.0);
  for (std::size_t b = 0; b < B; ++b) {
    const double* row = r.per_direction.data() + b * L;
    double v = 0;
    if (options.max_sliced) {
      v = *std::max_element(row, row + L);
    } else {
      for (std::size_t l = 0; l < L; ++l) v += row[l];
      v /= static_cast<double>(L);
    }
    r.value_pp[b] = v;
    r.value[b] = options.p == 1.0 ? v : std::pow(v, 1.0 / options.p);
  }
}

std::vector<double> sliced_term_weights(const std::vector<double>& per_direction,
                                        std::int64_t batch, std::int64_t projections,
                                        bool max_sliced) {
  const auto B = static_cast<std::size_t>(batch);
  const auto L = static_cast<std::size_t>(projections);
  std::vector<double> w(B * L, max_sliced ? 0.0 : 1.0 / static_cast<double>(L));
  if (max_sliced) {
    for (std::size_t b = 0; b < B; ++b) {
      const double* row = per_direction.data() + b * L;
      w[b * L + static_cast<std::size_t>(std::max_element(row, row + L) - row)] = 1.0;
    }
  }
  return w;
}

TensorView slice_problem(const TensorView& v, std::int64_t b, bool batched_weights) {
  if (!v.present()) return v;
  const bool points = v.rank == 3;
  if (!points && !(batched_weights && v.rank == 2)) return v;
  TensorView s = v;
  s.data = static_cast<const char*>(v.data) +
           b * v.strides[0] * static_cast<std::int64_t>(dtype_size(v.dtype));
  s.rank = v.rank - 1;
  s.shape = {v.shape[1], v.shape[2], 0};
  s.strides = {v.strides[1], v.strides[2], 0};
  return s;
}

}  // namespace otgpu::detail
