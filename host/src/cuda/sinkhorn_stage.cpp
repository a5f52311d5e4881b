// Staging of a CUDA Sinkhorn solve. Device views are never read by the host: kernels
// stage them into the canonical layout, validate them (finiteness, weights, masses)
// and compute the eps scale on the device. The synchronous API reads the checks back
// once, before iterating, and throws the errors the host validation throws for host
// data; the stream-ordered API runs the same staging without that read-back. Host
// views take the same road: their raw bytes are copied through the context's pinned
// staging memory into the workspace, and the same kernels stage them from there.
#include "sinkhorn_internal.h"

#include "otgpu_kernels/centered_gather.h"
#include "view_staging.h"

namespace otgpu::cuda_backend {

namespace {

/// One element of a host or device view (error messages only).
double read_element(const TensorView& v, std::int64_t offset) {
  if (v.space == MemorySpace::host) {
    return v.dtype == DType::f64 ? static_cast<const double*>(v.data)[offset]
                                 : static_cast<double>(static_cast<const float*>(v.data)[offset]);
  }
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
    // The staging rounds x - center (the mean of y), so the range is that of the
    // centred value (otgpu/detail/staging.h).
    throw NonFiniteInput(
        fmt::format("{}: element {} is {}, outside the fp32 range of the CUDA backend once "
                    "centred on the mean of y",
                    name, where, x));
  }
  throw NonFiniteInput(fmt::format("{}: element {} is {}", name, where, x));
}

}  // namespace

void set_device(int device) { OTGPU_CUDA_CHECK(cudaSetDevice(device)); }

std::size_t RawUpload::add(const void* host, std::size_t bytes) {
  const std::size_t offset = (total_ + kAlign - 1) / kAlign * kAlign;
  spans_.push_back({host, bytes, offset});
  total_ = offset + bytes;
  return spans_.size() - 1;
}

void RawUpload::run(runtime::Context& ctx, void* region) {
  region_ = static_cast<unsigned char*>(region);
  if (total_ == 0) return;
  // staging() waits until the previous use of the pinned memory has been copied.
  auto* pin = static_cast<unsigned char*>(ctx.staging(total_));
  for (const Span& sp : spans_) std::memcpy(pin + sp.offset, sp.host, sp.bytes);
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(region_, pin, total_, cudaMemcpyHostToDevice, ctx.stream()));
  ctx.staging_done();
}

const void* RawUpload::device(std::size_t k) const { return region_ + spans_[k].offset; }

HostViews add_host_views(const SinkhornProblem& problem, RawUpload& up) {
  HostViews hv;
  const TensorView* views[5] = {&problem.x, &problem.y, &problem.cost, &problem.a, &problem.b};
  for (int k = 0; k < 5; ++k) {
    const TensorView& v = *views[k];
    if (!v.present() || v.space != MemorySpace::host) continue;
    hv.host[k] = true;
    hv.slot[k] = up.add(v.data, view_span_bytes(v));
  }
  return hv;
}

SinkhornProblem device_problem(const SinkhornProblem& problem, const HostViews& hv,
                               const RawUpload& up) {
  SinkhornProblem p = problem;
  TensorView* views[5] = {&p.x, &p.y, &p.cost, &p.a, &p.b};
  for (int k = 0; k < 5; ++k) {
    if (!hv.host[k]) continue;
    views[k]->data = up.device(hv.slot[k]);
    views[k]->space = MemorySpace::device;
  }
  return p;
}

void convert_doubles(const void* src, std::int64_t count, float* dst, cudaStream_t s) {
  if (count <= 0) return;
  kernels::StridedSource in;
  in.data = src;
  in.is_f64 = true;
  in.rank = 2;
  in.stride[0] = 1;
  in.stride[1] = 1;
  // count rows of one coordinate: dst[i] = src[i].
  kernels::stage_points(in, 1, count, 1, 1, dst, s);
}

kernels::StridedSource source(const TensorView& v) {
  kernels::StridedSource s;
  s.data = v.data;
  s.is_f64 = v.dtype == DType::f64;
  s.rank = v.rank;
  for (int k = 0; k < v.rank && k < 3; ++k) s.stride[k] = v.stride(k);
  return s;
}

/// Phase 1: the caller's tensors into the canonical arrays (points padded and centred
/// on the mean of y before rounding, the centre in c.center; costs copied unless
/// contiguous fp32; weights in double and log form).
void stage_inputs(const SinkhornProblem& problem, const DevicePlan& pl, Carved& c, cudaStream_t s) {
  const auto& sh = pl.shape;
  DeviceSolve& d = c.d;
  if (d.points()) {
    // The centre from the caller's values in double, then float(v - c) in one pass:
    // rounding after the subtraction keeps fp64 clouds far from the origin at fp32
    // accuracy relative to their spread (otgpu/detail/staging.h).
    kernels::stage_centered_pair(strided3(problem.x, problem.x.data),
                                 strided3(problem.y, problem.y.data), sh.batch, pl.dp, c.center,
                                 const_cast<float*>(d.X), const_cast<float*>(d.Y), s);
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

/// Enqueues the data checks on the staged arrays. Points: the staging wrote NaN or
/// +-inf exactly where a source value is not finite or its centred value is outside
/// the fp32 range (staged_coordinate), so a scan for non-finite fp32 values finds the
/// first bad element; a non-finite centre stages the other coordinates as 0, so the
/// error names the element of y that caused it.
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

/// Phase 2: the mean cost per problem into c.mean when eps is relative, from the
/// centred points (stage_inputs centred them: costs are translation invariant).
void stage_center(const DevicePlan& pl, const Carved& c, bool relative, cudaStream_t s) {
  const auto& sh = pl.shape;
  const DeviceSolve& d = c.d;
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

/// Starts F and G from the raw fp64 copies of options.f_init / g_init (nullptr: zeros).
void init_potentials(const void* f_init, const void* g_init, const DeviceSolve& d, cudaStream_t s) {
  const auto nB = d.B * d.n, mB = d.B * d.m;
  if (f_init == nullptr) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.F, 0, static_cast<std::size_t>(nB) * sizeof(float), s));
  } else {
    convert_doubles(f_init, nB, d.F, s);
  }
  if (g_init == nullptr) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.G, 0, static_cast<std::size_t>(mB) * sizeof(float), s));
  } else {
    convert_doubles(g_init, mB, d.G, s);
  }
}

StagedSolve stage_solve(runtime::Context& ctx, const SinkhornProblem& problem,
                        const SinkhornOptions& o, const DevicePlan& pl, RawUpload& up,
                        const HostViews& hv) {
  const cudaStream_t s = ctx.stream();
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  Carver counter(nullptr);
  (void)carve(counter, pl, true, false);
  (void)counter.take<unsigned char>(up.bytes());
  Carver cv(ctx.workspace(counter.used()));
  StagedSolve st{carve(cv, pl, true, false), {}};
  up.run(ctx, cv.take<unsigned char>(up.bytes()));
  const SinkhornProblem dev = device_problem(problem, hv, up);
  stage_inputs(dev, pl, st.c, s);
  enqueue_checks(pl, st.c, s);
  stage_center(pl, st.c, o.eps_relative, s);
  st.mean = check_device_inputs(problem, pl, st.c, balanced, o.eps_relative, s);
  stage_schedule(o, pl, st.c, s);
  return st;
}

}  // namespace otgpu::cuda_backend
