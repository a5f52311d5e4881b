// Staging of a CUDA Sinkhorn solve. Device views are never read by the host: kernels
// stage them into the canonical layout, validate them (finiteness, weights, masses)
// and compute the eps scale on the device. The synchronous API reads the checks back
// once, before iterating, and throws the errors the host validation throws for host
// data; the stream-ordered API runs the same staging without that read-back. Host
// views are laid out on the host (canonicalize) and uploaded.
#include "sinkhorn_internal.h"

namespace otgpu::cuda_backend {

namespace {

/// One element of a device view (error messages only).
double read_element(const TensorView& v, std::int64_t offset) {
  if (v.dtype == DType::f64) {
    double x = 0;
    OTGPU_CUDA_CHECK(cudaMemcpy(&x, static_cast<const double*>(v.data) + offset, sizeof(double),
                                cudaMemcpyDeviceToHost));
    return x;
  }
  float x = 0;
  OTGPU_CUDA_CHECK(cudaMemcpy(&x, static_cast<const float*>(v.data) + offset, sizeof(float),
                              cudaMemcpyDeviceToHost));
  return x;
}

[[noreturn]] void throw_bad_element(const TensorView& v, const char* name, std::int64_t b,
                                    std::int64_t i, std::int64_t k) {
  const bool batched = v.rank == 3;
  const std::int64_t off = batched ? b * v.stride(0) + i * v.stride(1) + k * v.stride(2)
                                   : i * v.stride(0) + k * v.stride(1);
  const double x = read_element(v, off);
  const std::string where =
      batched ? fmt::format("[{}, {}, {}]", b, i, k) : fmt::format("[{}, {}]", i, k);
  if (std::isfinite(x)) {
    throw NonFiniteInput(fmt::format(
        "{}: element {} is {}, outside the fp32 range of the CUDA backend", name, where, x));
  }
  throw NonFiniteInput(fmt::format("{}: element {} is {}", name, where, x));
}

}  // namespace

Canonical canonicalize(const SinkhornProblem& p, const detail::SinkhornShape& s, bool balanced) {
  Canonical c;
  c.B = s.batch;
  c.n = s.n;
  c.m = s.m;
  c.d = s.d;
  c.cost = p.cost_kind;
  const auto B = static_cast<std::size_t>(s.batch);
  auto load3 = [](const TensorView& v, std::int64_t b, std::int64_t i, std::int64_t k) {
    return v.rank == 3 ? load_as_double(v, b, i, k) : load_as_double(v, i, k);
  };
  if (p.cost_kind == CostKind::matrix) {
    c.C.resize(B * static_cast<std::size_t>(s.n * s.m));
    for (std::int64_t b = 0; b < s.batch; ++b)
      for (std::int64_t i = 0; i < s.n; ++i)
        for (std::int64_t j = 0; j < s.m; ++j)
          c.C[static_cast<std::size_t>((b * s.n + i) * s.m + j)] =
              static_cast<float>(load3(p.cost, b, i, j));
  } else {
    c.dp = padded_dim(s.d);
    const auto dp = static_cast<std::size_t>(c.dp);
    c.X.assign(B * static_cast<std::size_t>(s.n) * dp, 0.f);
    c.Y.assign(B * static_cast<std::size_t>(s.m) * dp, 0.f);
    c.center.assign(B * dp, 0.0);
    for (std::int64_t b = 0; b < s.batch; ++b) {
      double* ctr = c.center.data() + static_cast<std::size_t>(b) * dp;
      for (std::int64_t j = 0; j < s.m; ++j)
        for (std::int64_t k = 0; k < s.d; ++k) ctr[k] += load3(p.y, b, j, k);
      for (std::int64_t k = 0; k < s.d; ++k) ctr[k] /= static_cast<double>(s.m);
      for (std::int64_t i = 0; i < s.n; ++i)
        for (std::int64_t k = 0; k < s.d; ++k)
          c.X[(static_cast<std::size_t>(b * s.n + i)) * dp + static_cast<std::size_t>(k)] =
              static_cast<float>(load3(p.x, b, i, k) - ctr[k]);
      for (std::int64_t j = 0; j < s.m; ++j)
        for (std::int64_t k = 0; k < s.d; ++k)
          c.Y[(static_cast<std::size_t>(b * s.m + j)) * dp + static_cast<std::size_t>(k)] =
              static_cast<float>(load3(p.y, b, j, k) - ctr[k]);
    }
  }
  auto weights = [&](const TensorView& w, std::int64_t len, std::vector<double>& out) {
    out.resize(B * static_cast<std::size_t>(len));
    for (std::int64_t b = 0; b < s.batch; ++b)
      for (std::int64_t i = 0; i < len; ++i)
        out[static_cast<std::size_t>(b * len + i)] =
            !w.present() ? 1.0 / static_cast<double>(len)
                         : (w.rank == 2 ? load_as_double(w, b, i) : load_as_double(w, i));
  };
  weights(p.a, s.n, c.a);
  weights(p.b, s.m, c.b);
  if (balanced) {
    for (std::int64_t b = 0; b < s.batch; ++b) {
      double ma = 0, mb = 0;
      for (std::int64_t i = 0; i < s.n; ++i) ma += c.a[static_cast<std::size_t>(b * s.n + i)];
      for (std::int64_t j = 0; j < s.m; ++j) mb += c.b[static_cast<std::size_t>(b * s.m + j)];
      for (std::int64_t j = 0; j < s.m; ++j) c.b[static_cast<std::size_t>(b * s.m + j)] *= ma / mb;
    }
  }
  auto logs = [](const std::vector<double>& w, std::vector<float>& out) {
    out.resize(w.size());
    for (std::size_t k = 0; k < w.size(); ++k)
      out[k] =
          w[k] > 0 ? static_cast<float>(std::log(w[k])) : -std::numeric_limits<float>::infinity();
  };
  logs(c.a, c.logA);
  logs(c.b, c.logB);
  return c;
}

/// Mean cost per problem over all n*m pairs (eps_relative), on the host in double
/// except the Euclidean one, which needs an O(nm) pass and runs on the device.
std::vector<double> mean_costs(const Canonical& c, const float* dX, const float* dY,
                               cudaStream_t s) {
  const auto B = static_cast<std::size_t>(c.B);
  std::vector<double> mean(B, 0.0);
  if (c.cost == CostKind::matrix) {
    for (std::size_t b = 0; b < B; ++b) {
      double acc = 0;
      const std::size_t nm = static_cast<std::size_t>(c.n * c.m);
      for (std::size_t k = 0; k < nm; ++k) acc += c.C[b * nm + k];
      mean[b] = acc / static_cast<double>(nm);
    }
  } else if (c.cost == CostKind::sqeuclidean) {
    // mean_ij |x_i - y_j|^2 = var(x) + var(y) + |mean x - mean y|^2 (centered data).
    const auto dp = static_cast<std::size_t>(c.dp);
    for (std::size_t b = 0; b < B; ++b) {
      for (std::size_t k = 0; k < dp; ++k) {
        double sx = 0, sxx = 0, sy = 0, syy = 0;
        for (std::int64_t i = 0; i < c.n; ++i) {
          const double v =
              c.X[(b * static_cast<std::size_t>(c.n) + static_cast<std::size_t>(i)) * dp + k];
          sx += v;
          sxx += v * v;
        }
        for (std::int64_t j = 0; j < c.m; ++j) {
          const double v =
              c.Y[(b * static_cast<std::size_t>(c.m) + static_cast<std::size_t>(j)) * dp + k];
          sy += v;
          syy += v * v;
        }
        const double mx = sx / static_cast<double>(c.n), my = sy / static_cast<double>(c.m);
        mean[b] += (sxx / static_cast<double>(c.n) - mx * mx) +
                   (syy / static_cast<double>(c.m) - my * my) + (mx - my) * (mx - my);
      }
    }
  } else {
    DeviceArray<double> out(B, s);
    kernels::mean_euclidean_cost(dX, dY, out.get(), c.B, c.n, c.m, c.dp, s);
    out.download(mean.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  for (std::size_t b = 0; b < B; ++b) {
    if (!(mean[b] > 0) || !std::isfinite(mean[b])) {
      throw InvalidArgument(fmt::format(
          "eps_relative: mean cost of problem {} is {}; a relative eps needs a positive mean cost",
          b, mean[b]));
    }
  }
  return mean;
}

void set_device(int device) { OTGPU_CUDA_CHECK(cudaSetDevice(device)); }

kernels::OnlinePass pass(const Canonical& c, bool f_side, const float* dX, const float* dY,
                         const float* dLogA, const float* dLogB, const float* dF, const float* dG,
                         const float* eps, const int* active) {
  kernels::OnlinePass p;
  p.cost = c.cost;
  p.rows = f_side ? dX : dY;
  p.cols = f_side ? dY : dX;
  p.col_logw = f_side ? dLogB : dLogA;
  p.col_pot = f_side ? dG : dF;
  p.eps = eps;
  p.active = active;
  p.B = c.B;
  p.n_rows = f_side ? c.n : c.m;
  p.n_cols = f_side ? c.m : c.n;
  p.dp = c.dp;
  return p;
}

kernels::StridedSource source(const TensorView& v) {
  kernels::StridedSource s;
  s.data = v.data;
  s.is_f64 = v.dtype == DType::f64;
  s.rank = v.rank;
  for (int k = 0; k < v.rank && k < 3; ++k) s.stride[k] = v.stride(k);
  return s;
}

/// Phase 1: the caller's tensors into the canonical arrays (points padded, not yet
/// centered; costs copied unless contiguous fp32; weights in double and log form).
void stage_inputs(const SinkhornProblem& problem, const DevicePlan& pl, DeviceSolve& d,
                  cudaStream_t s) {
  const auto& sh = pl.shape;
  if (d.points()) {
    kernels::stage_points(source(problem.x), sh.batch, sh.n, sh.d, pl.dp, const_cast<float*>(d.X),
                          s);
    kernels::stage_points(source(problem.y), sh.batch, sh.m, sh.d, pl.dp, const_cast<float*>(d.Y),
                          s);
  } else if (pl.stage_cost) {
    kernels::stage_points(source(problem.cost), sh.batch, sh.n, sh.m, static_cast<int>(sh.m),
                          const_cast<float*>(d.C), s);
  } else {
    d.C = static_cast<const float*>(problem.cost.data);
  }
  kernels::StridedSource none;
  kernels::stage_weights(problem.a.present() ? source(problem.a) : none, sh.batch, sh.n,
                         const_cast<double*>(d.a), const_cast<float*>(d.logA), s);
  kernels::stage_weights(problem.b.present() ? source(problem.b) : none, sh.batch, sh.m,
                         const_cast<double*>(d.b), const_cast<float*>(d.logB), s);
}

/// Enqueues the data checks on the staged (not yet centered) arrays.
void enqueue_checks(const DevicePlan& pl, const Carved& c, cudaStream_t s) {
  const auto& sh = pl.shape;
  const DeviceSolve& d = c.d;
  if (d.points()) {
    kernels::find_nonfinite(d.X, sh.batch * sh.n * pl.dp, c.bad + 0, s);
    kernels::find_nonfinite(d.Y, sh.batch * sh.m * pl.dp, c.bad + 1, s);
  } else {
    kernels::find_nonfinite(d.C, sh.batch * sh.n * sh.m, c.bad + 0, s);
    kernels::find_nonfinite(nullptr, 0, c.bad + 1, s);  // no y: marks "none"
  }
  kernels::check_weights(d.a, sh.batch, sh.n, c.mass, c.bad + 2, s);
  kernels::check_weights(d.b, sh.batch, sh.m, c.mass + sh.batch, c.bad + 3, s);
}

/// Phase 2: centers the points (costs are translation invariant) and computes the
/// mean cost per problem into c.mean when eps is relative.
void stage_center(const DevicePlan& pl, const Carved& c, bool relative, cudaStream_t s) {
  const auto& sh = pl.shape;
  const DeviceSolve& d = c.d;
  if (d.points()) {
    kernels::center_points(const_cast<float*>(d.X), const_cast<float*>(d.Y), c.center, sh.batch,
                           sh.n, sh.m, pl.dp, s);
  }
  if (!relative) return;
  if (pl.cost == CostKind::sqeuclidean) {
    kernels::mean_sqeuclidean_cost(d.X, d.Y, c.mean, sh.batch, sh.n, sh.m, pl.dp, s);
  } else if (pl.cost == CostKind::euclidean) {
    kernels::mean_euclidean_cost(d.X, d.Y, c.mean, sh.batch, sh.n, sh.m, pl.dp, s);
  } else {
    kernels::mean_matrix_cost(d.C, sh.batch, sh.n * sh.m, c.mean, s);
  }
}

/// Phase 3 (solves): balances b, builds the eps / lambda tables, resets the flags.
void stage_schedule(const SinkhornOptions& o, const DevicePlan& pl, const Carved& c,
                    cudaStream_t s) {
  const auto& sh = pl.shape;
  const DeviceSolve& d = c.d;
  if (std::isinf(o.rho_a) && std::isinf(o.rho_b)) {
    kernels::balance_weights(d.a, const_cast<double*>(d.b), const_cast<float*>(d.logB), sh.batch,
                             sh.n, sh.m, s);
  }
  kernels::make_eps_tables(o.eps_relative ? c.mean : nullptr, o.eps, o.eps_init, o.eps_decay,
                           o.rho_a, o.rho_b, pl.K, const_cast<float*>(d.eps_tab),
                           const_cast<float*>(d.lam_a_tab), const_cast<float*>(d.lam_b_tab),
                           const_cast<float*>(d.small_eps), const_cast<float*>(d.small_eps_init),
                           sh.batch, s);
  kernels::fill_ints(d.active, 1, sh.batch, s);
  kernels::fill_ints(d.iters, o.max_iter, sh.batch, s);
}

/// Reads the device-side checks back (one synchronization of s) and throws what the
/// host validation throws for the same data. Returns the mean costs when relative.
std::vector<double> check_device_inputs(const SinkhornProblem& problem, const DevicePlan& pl,
                                        const Carved& c, bool balanced, bool relative,
                                        cudaStream_t s) {
  const auto& sh = pl.shape;
  const auto B = static_cast<std::size_t>(sh.batch);
  unsigned long long bad[4] = {0, 0, 0, 0};
  std::vector<double> mass(2 * B), mean(relative ? B : 0);
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(bad, c.bad, sizeof(bad), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(mass.data(), c.mass, 2 * B * sizeof(double), cudaMemcpyDeviceToHost, s));
  if (relative) {
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(mean.data(), c.mean, B * sizeof(double), cudaMemcpyDeviceToHost, s));
  }
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  constexpr unsigned long long kNone = ~0ull;
  const auto dp = static_cast<unsigned long long>(std::max(pl.dp, 1));
  auto point_error = [&](const TensorView& v, const char* name, std::int64_t rows,
                         unsigned long long e) {
    const auto r = static_cast<unsigned long long>(rows);
    throw_bad_element(v, name, static_cast<std::int64_t>(e / (dp * r)),
                      static_cast<std::int64_t>((e / dp) % r), static_cast<std::int64_t>(e % dp));
  };
  if (bad[0] != kNone) {
    if (pl.cost != CostKind::matrix) {
      point_error(problem.x, "x", sh.n, bad[0]);
    } else {
      const auto n = static_cast<unsigned long long>(sh.n);
      const auto m = static_cast<unsigned long long>(sh.m);
      throw_bad_element(problem.cost, "cost", static_cast<std::int64_t>(bad[0] / (n * m)),
                        static_cast<std::int64_t>((bad[0] / m) % n),
                        static_cast<std::int64_t>(bad[0] % m));
    }
  }
  if (bad[1] != kNone) point_error(problem.y, "y", sh.m, bad[1]);
  auto weight_error = [&](const TensorView& w, const char* name, std::int64_t len,
                          const double* staged, unsigned long long e) {
    double x = 0;
    OTGPU_CUDA_CHECK(cudaMemcpy(&x, staged + e, sizeof(double), cudaMemcpyDeviceToHost));
    const auto l = static_cast<unsigned long long>(len);
    const std::string where =
        w.rank == 2 ? fmt::format("[{}, {}]", e / l, e % l) : fmt::format("[{}]", e % l);
    if (std::isfinite(x)) {
      throw NonFiniteInput(
          fmt::format("{}: element {} is {} (weights must be >= 0)", name, where, x));
    }
    throw NonFiniteInput(fmt::format("{}: element {} is {}", name, where, x));
  };
  if (bad[2] != kNone) weight_error(problem.a, "a", sh.n, c.d.a, bad[2]);
  if (bad[3] != kNone) weight_error(problem.b, "b", sh.m, c.d.b, bad[3]);
  for (std::size_t b = 0; b < B; ++b) {
    const double ma = mass[b], mb = mass[B + b];
    for (const auto& [mv, name, batched] :
         {std::tuple{ma, "a", sh.a_batched}, std::tuple{mb, "b", sh.b_batched}}) {
      if (mv > 0) continue;
      if (batched) {
        throw InvalidArgument(
            fmt::format("{}: problem {} has total mass 0 (weights need a positive mass)", name, b));
      }
      throw InvalidArgument(
          fmt::format("{}: total mass is 0 (weights need a positive mass)", name));
    }
    if (balanced && !detail::masses_match(ma, mb)) {
      throw InvalidArgument(
          fmt::format("a, b: problem {} has mass(a) = {} and mass(b) = {}; a balanced problem "
                      "(rho_a = rho_b = inf) needs equal masses (relative 1e-5); set rho_a / rho_b "
                      "for unbalanced transport",
                      b, ma, mb));
    }
  }
  for (std::size_t b = 0; b < mean.size(); ++b) {
    if (!(mean[b] > 0) || !std::isfinite(mean[b])) {
      throw InvalidArgument(fmt::format(
          "eps_relative: mean cost of problem {} is {}; a relative eps needs a positive mean cost",
          b, mean[b]));
    }
  }
  return mean;
}

/// Starts F and G from options.f_init / g_init (converted to fp32) or zeros.
void init_potentials(const SinkhornOptions& o, const DeviceSolve& d, cudaStream_t s) {
  const auto nB = static_cast<std::size_t>(d.B * d.n), mB = static_cast<std::size_t>(d.B * d.m);
  std::vector<float> f0(o.f_init.begin(), o.f_init.end()), g0(o.g_init.begin(), o.g_init.end());
  if (f0.empty()) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.F, 0, nB * sizeof(float), s));
  } else {
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(d.F, f0.data(), nB * sizeof(float), cudaMemcpyHostToDevice, s));
  }
  if (g0.empty()) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.G, 0, mB * sizeof(float), s));
  } else {
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(d.G, g0.data(), mB * sizeof(float), cudaMemcpyHostToDevice, s));
  }
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // f0, g0 are pageable and go out of scope
}

}  // namespace otgpu::cuda_backend
