// W1 (online point-cloud Sinkhorn), W1d (dense cost held in memory) and W2 (many
// small problems) of docs/benchmarks.md, through the public API.
//
// Timing: a solve of exactly N iterations (check_every = 0) minus a solve of one
// iteration, divided by N - 1: what remains is the iteration loop alone, without the
// staging and the final report that both solves share. GPU rows call the
// stream-ordered device API (otgpu/device.h) on data already in device memory
// (cudaMalloc'd and filled before timing, workspace reserved), timed with CUDA events
// around the enqueue alone; CPU rows time otgpu::sinkhorn.
#include <fmt/format.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime_api.h>

#include "otgpu/device.h"
#endif

namespace otgpu::bench {

namespace {

struct Points {
  std::vector<float> x, y;
};

/// X ~ U[0,1)^d, Y ~ U[0,1)^d + 0.1, seeded (docs/benchmarks.md).
Points make_points(std::int64_t B, std::int64_t n, std::int64_t m, std::int64_t d,
                   std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  Points p;
  p.x.resize(static_cast<std::size_t>(B * n * d));
  p.y.resize(static_cast<std::size_t>(B * m * d));
  for (float& v : p.x) v = u(rng);
  for (float& v : p.y) v = u(rng) + 0.1f;
  return p;
}

#ifdef OTGPU_WITH_CUDA  // the dense workload runs on the GPU only
std::vector<float> cost_matrix(const Points& p, std::int64_t n, std::int64_t m, std::int64_t d) {
  std::vector<float> c(static_cast<std::size_t>(n * m));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < m; ++j) {
      float s = 0;
      for (std::int64_t k = 0; k < d; ++k) {
        const float t =
            p.x[static_cast<std::size_t>(i * d + k)] - p.y[static_cast<std::size_t>(j * d + k)];
        s += t * t;
      }
      c[static_cast<std::size_t>(i * m + j)] = s;
    }
  return c;
}
#endif

/// Milliseconds per iteration of the loop, median over ctx.repeats.
double ms_per_iter(const Context& ctx, const SinkhornProblem& p, double eps, Backend backend,
                   int iters) {
  SinkhornOptions o;
  o.eps = eps;
  o.check_every = 0;
  o.backend = backend;
  auto solve = [&](int k) {
    o.max_iter = k;
    return sinkhorn(p, o).time_ms;
  };
  return median_ms(ctx, [&] {
    const double t_long = solve(iters);
    return per_iteration_ms(t_long, solve(1), iters);
  });
}

#ifdef OTGPU_WITH_CUDA

void check(cudaError_t st, const char* what) {
  if (st != cudaSuccess) {
    throw CudaError(fmt::format("bench: {} failed: {}", what, cudaGetErrorString(st)),
                    static_cast<int>(st));
  }
}

/// A device copy of host data, allocated before any timing.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    check(cudaMalloc(reinterpret_cast<void**>(&p_), count * sizeof(T)), "cudaMalloc");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    check(cudaMemcpy(p_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }

 private:
  std::size_t count_;
  T* p_ = nullptr;
};

/// Stream and event pair, released on every path out.
struct Timing {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  Timing() {
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
  }
  ~Timing() {
    cudaEventDestroy(stop);
    cudaEventDestroy(start);
    cudaStreamDestroy(stream);
  }
  Timing(const Timing&) = delete;
  Timing& operator=(const Timing&) = delete;
};

/// Milliseconds per iteration of sinkhorn_async on a device-resident problem (B
/// problems of n x m), median over ctx.repeats.
double gpu_ms_per_iter(const Context& ctx, const SinkhornProblem& p, std::int64_t B, std::int64_t n,
                       std::int64_t m, double eps, int iters) {
  Timing t;
  DeviceBuffer<float> f(static_cast<std::size_t>(B * n)), g(static_cast<std::size_t>(B * m));
  SinkhornOptions o;
  o.eps = eps;
  o.eps_init = 0;  // fixed eps: every iteration is the same work
  o.check_every = 0;
  o.backend = Backend::cuda;
  o.max_iter = iters;
  double ms = 0;
  {
    GpuContext gpu(0, t.stream);  // destroyed (and synchronized) before the stream
    gpu.reserve(sinkhorn_async_workspace_bytes(p, o));
    DeviceSinkhornOutputs out;
    out.f = f.get();
    out.g = g.get();
    auto timed = [&](int k) {
      o.max_iter = k;
      check(cudaEventRecord(t.start, t.stream), "cudaEventRecord");
      sinkhorn_async(gpu, p, o, out);
      check(cudaEventRecord(t.stop, t.stream), "cudaEventRecord");
      check(cudaEventSynchronize(t.stop), "cudaEventSynchronize");
      float elapsed = 0;
      check(cudaEventElapsedTime(&elapsed, t.start, t.stop), "cudaEventElapsedTime");
      return static_cast<double>(elapsed);
    };
    ms = median_ms(ctx, [&] {
      const double t_long = timed(iters);
      return per_iteration_ms(t_long, timed(1), iters);
    });
  }
  return ms;
}

#endif  // OTGPU_WITH_CUDA

#ifdef OTGPU_WITH_CUDA
/// A GPU row: the kernels evaluate exactly one exp per pair and half-step, so the
/// exps counted (2 B n m per iteration) are the exps done.
Row make_exp_row(const std::string& workload, const std::string& solver, nlohmann::json params,
                 double ms, double exps_per_iter, double exp_roof) {
  Row r;
  r.workload = workload;
  r.solver = solver;
  r.backend = "cuda";
  r.params = std::move(params);
  r.ms = ms;
  r.time_unit = "ms/iter";
  r.figure = exps_per_iter / (ms * 1e-3);
  r.figure_unit = "exp/s";
  r.roofline = exp_roof;
  r.bound = "exp";
  return r;
}

#endif

/// A CPU row: the reference skips the exp of every term below e^-60 of its row max
/// (how many depends on eps and the data), so exps are not what it does per pair.
/// Counted instead: pairs visited (2 B n m per iteration, one per half-step), against
/// the measured rate of the same sweep with every exp skipped (W5 cpu-pair).
Row make_pair_row(const Context& ctx, const std::string& workload, nlohmann::json params, double ms,
                  double pairs_per_iter) {
  Row r;
  r.workload = workload;
  r.solver = "cpu-reference";
  r.backend = "cpu";
  r.params = std::move(params);
  r.ms = ms;
  r.time_unit = "ms/iter";
  r.figure = pairs_per_iter / (ms * 1e-3);
  r.figure_unit = "pair/s";
  r.roofline = ctx.cpu_pair_per_s;
  r.bound = "pair";
  r.notes.emplace_back(
      "CPU rows count pairs (i, j) visited, 2 B n m per iteration, against W5 cpu-pair (the "
      "same sweep with every exp skipped): the fp64 reference evaluates an exp only for terms "
      "within e^-60 of the row max, so an exp count would overstate its work");
  return r;
}

void run_w1(const Context& ctx, std::vector<Row>& rows) {
  // CPU reference rows: small sizes, so the quick suite stays quick without a GPU.
  if (!ctx.gpu_only) {
    for (std::int64_t d : {2, 64}) {
      const std::int64_t n = 1024;
      const auto pts = make_points(1, n, n, d, 1);
      SinkhornProblem p;
      p.x = TensorView::host(pts.x.data(), {n, d});
      p.y = TensorView::host(pts.y.data(), {n, d});
      const double ms = ms_per_iter(ctx, p, 0.01, Backend::cpu, 10);
      rows.push_back(make_pair_row(ctx, "W1", {{"n", n}, {"m", n}, {"d", d}, {"eps", 0.01}}, ms,
                                   2.0 * static_cast<double>(n) * static_cast<double>(n)));
    }
  }
  std::vector<std::int64_t> sizes = {4096, 16384, 65536};
  if (ctx.suite == "full") sizes.push_back(262144);
  if (!ctx.has_gpu) {
    std::string ns;
    for (auto n : sizes) {
      if (!ns.empty()) ns += ",";
      ns += std::to_string(n);
    }
    rows.push_back(skipped_gpu_row(ctx, "W1", "cuda-online",
                                   {{"n", ns}, {"m", ns}, {"d", "2,64"}, {"eps", 0.01}}));
    return;
  }
#ifdef OTGPU_WITH_CUDA
  for (std::int64_t d : {2, 64}) {
    for (std::int64_t n : sizes) {
      const auto pts = make_points(1, n, n, d, 2);
      DeviceBuffer<float> dx(pts.x), dy(pts.y);
      SinkhornProblem p;
      p.x = TensorView::device(dx.get(), {n, d});
      p.y = TensorView::device(dy.get(), {n, d});
      const int iters = n >= 65536 && d == 64 ? 20 : 100;
      const double ms = gpu_ms_per_iter(ctx, p, 1, n, n, 0.01, iters);
      auto r = make_exp_row("W1", "cuda-online",
                            {{"n", n}, {"m", n}, {"d", d}, {"eps", 0.01}, {"iters", iters}}, ms,
                            2.0 * static_cast<double>(n) * static_cast<double>(n), ctx.exp_per_s);
      r.notes.emplace_back(
          d == 2 ? "d=2: fp32, one ex2 per pair, column splits below a wave; small n is "
                   "launch-bound; reference FlashSinkhorn fp32 16.0 ms/iter at n=65536"
                 : "d=64: fp32 SIMT distances (FMA-bound, no tensor cores yet); reference "
                   "FlashSinkhorn TF32 7.25 ms/iter at n=65536");
      rows.push_back(std::move(r));
    }
  }
#endif
}

void run_w1d(const Context& ctx, std::vector<Row>& rows) {
  if (!ctx.has_gpu) {
    rows.push_back(skipped_gpu_row(ctx, "W1d", "cuda-dense",
                                   {{"n", "4096,16384"}, {"m", "4096,16384"}, {"d", 2}}));
    return;
  }
#ifdef OTGPU_WITH_CUDA
  for (std::int64_t n : {4096, 16384}) {
    const std::int64_t d = 2;
    const auto pts = make_points(1, n, n, d, 3);
    DeviceBuffer<float> dc(cost_matrix(pts, n, n, d));
    SinkhornProblem p;
    p.cost = TensorView::device(dc.get(), {n, n});  // contiguous fp32: read in place
    p.cost_kind = CostKind::matrix;
    const double ms = gpu_ms_per_iter(ctx, p, 1, n, n, 0.01, 100);
    Row r;
    r.workload = "W1d";
    r.solver = "cuda-dense";
    r.backend = "cuda";
    r.params = {{"n", n}, {"m", n}, {"d", d}, {"eps", 0.01}, {"iters", 100}};
    r.ms = ms;
    r.time_unit = "ms/iter";
    const double bytes = 2.0 * static_cast<double>(n) * static_cast<double>(n) * 4.0;
    r.figure = bytes / (ms * 1e-3);
    r.figure_unit = "B/s";
    r.roofline = ctx.copy_bytes_per_s;
    r.bound = "copy";
    r.notes.emplace_back(
        "dense: C read once per half-step (row and column passes), 8 n m bytes per iteration; "
        "reference OTT-JAX 1.81 ms/iter at n=16384");
    rows.push_back(std::move(r));
  }
#endif
}

void run_w2(const Context& ctx, std::vector<Row>& rows) {
  struct Cfg {
    std::int64_t B, n, d;
    const char* ref;
  };
  const Cfg cfgs[] = {
      {64, 512, 32, "B=64: reference OTT-JAX vmap 0.16 ms/iter, target <= 0.016 ms/iter"},
      {1024, 128, 2, "B=1024: reference OTT-JAX vmap 0.15 ms/iter, target <= 0.015 ms/iter"}};
  for (const auto& cfg : cfgs) {
    const auto pts = make_points(cfg.B, cfg.n, cfg.n, cfg.d, 4);
    SinkhornProblem p;
    p.x = TensorView::host(pts.x.data(), {cfg.B, cfg.n, cfg.d});
    p.y = TensorView::host(pts.y.data(), {cfg.B, cfg.n, cfg.d});
    const double pairs =
        2.0 * static_cast<double>(cfg.B) * static_cast<double>(cfg.n) * static_cast<double>(cfg.n);
    const nlohmann::json params = {
        {"B", cfg.B}, {"n", cfg.n}, {"m", cfg.n}, {"d", cfg.d}, {"eps", 0.05}};
    if (!ctx.gpu_only) {
      const double ms = ms_per_iter(ctx, p, 0.05, Backend::cpu, 3);
      auto r = make_pair_row(ctx, "W2", params, ms, pairs);
      r.notes.emplace_back("W2: time for the whole batch per iteration");
      rows.push_back(std::move(r));
    }
    if (!ctx.has_gpu) {
      rows.push_back(skipped_gpu_row(ctx, "W2", "cuda-small", params));
      continue;
    }
#ifdef OTGPU_WITH_CUDA
    {
      DeviceBuffer<float> dx(pts.x), dy(pts.y);
      SinkhornProblem pd;
      pd.x = TensorView::device(dx.get(), {cfg.B, cfg.n, cfg.d});
      pd.y = TensorView::device(dy.get(), {cfg.B, cfg.n, cfg.d});
      const double ms = gpu_ms_per_iter(ctx, pd, cfg.B, cfg.n, cfg.n, 0.05, 100);
      auto r = make_exp_row("W2", "cuda-small", params, ms, pairs, ctx.exp_per_s);
      r.notes.emplace_back("W2: time for the whole batch per iteration");
      r.notes.emplace_back("cuda-small: one block per problem, all iterations in one launch");
      r.notes.emplace_back(cfg.ref);
      rows.push_back(std::move(r));
    }
#endif
  }
}

}  // namespace

void add_sinkhorn_workloads(std::vector<Workload>& out) {
  out.push_back({"W1",
                 "online point-cloud Sinkhorn, fixed iterations, no convergence checks (CPU "
                 "rows: n=1024)",
                 {"quick", "full"},
                 run_w1});
  out.push_back({"W1d",
                 "dense-cost Sinkhorn, cost matrix held in memory (GPU only)",
                 {"quick", "full"},
                 run_w1d});
  out.push_back({"W2", "batched small problems, eps = 0.05", {"quick", "full"}, run_w2});
}

}  // namespace otgpu::bench
