// Sinkhorn on the one GPU runtime: contexts that stop allocating after the first call
// of a size, synchronous calls ordered after the caller's stream, set_stream while work
// is queued, the solve state reused by the derived outputs and the divergence, raw
// staging of strided host views, and batches above the 65,535 launch-grid limit. Every
// number is compared with the CPU backend (fp64) or with an independent GPU road.
#include <gtest/gtest.h>

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/otgpu.h"
#include "otgpu_host/gpu_runtime.h"

namespace {

using otgpu::Backend;
using otgpu::CostKind;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;
using otgpu::TensorView;

using otgpu_test::DeviceBuffer;
using otgpu_test::uniform;

SinkhornOptions fixed(Backend be, int iters = 30) {
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.max_iter = iters;
  o.check_every = 0;
  // GPU and CPU compared iteration for iteration: plain updates at eps from the start
  // (the library defaults over-relax on the CPU and scale eps on both, differently).
  o.eps_init = 0;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.tol = 1e-4;
  o.backend = be;
  return o;
}

/// |gpu - cpu| <= 2e-4 scale + rel |cpu| elementwise (fp32 round-off of C/eps scores
/// over a few dozen iterations), the tolerances of test_sinkhorn_gpu.cpp.
void expect_close(const std::vector<double>& gpu, const std::vector<double>& cpu, double scale,
                  const std::string& what, double rel = 2e-5) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t k = 0; k < gpu.size(); ++k) {
    const double err = std::abs(gpu[k] - cpu[k]) / (2e-4 * scale + rel * std::abs(cpu[k]));
    if (!(err <= worst)) {
      worst = std::isfinite(err) ? err : std::numeric_limits<double>::infinity();
      at = k;
    }
  }
  EXPECT_LE(worst, 1.0) << what << "[" << at << "]: gpu " << gpu[at] << " cpu " << cpu[at];
}

/// The CPU's derived outputs on the GPU result's potentials (an independent
/// implementation of the same formulas).
SinkhornResult as_cpu(SinkhornResult r) {
  r.backend = Backend::cpu;
  r.device = -1;
  r.state.reset();
  return r;
}

struct Clouds {
  std::int64_t B, n, m, d;
  std::vector<double> x, y;
  Clouds(std::int64_t b, std::int64_t rows, std::int64_t cols, std::int64_t dim, std::uint32_t seed)
      : B(b), n(rows), m(cols), d(dim) {
    x = uniform(static_cast<std::size_t>(B * n * d), seed);
    y = uniform(static_cast<std::size_t>(B * m * d), seed + 1, 0.1, 1.1);
  }
  SinkhornProblem host() const {
    SinkhornProblem p;
    p.x = TensorView::host(x.data(), {B, n, d});
    p.y = TensorView::host(y.data(), {B, m, d});
    return p;
  }
};

TEST(RuntimeGpu, RepeatedCallsAllocateNothingAfterTheFirst) {
  REQUIRE_GPU();
  const Clouds c(2, 300, 280, 3, 1);
  const auto p = c.host();
  auto o = fixed(Backend::cuda, 40);
  o.check_every = 10;  // the lagged poll (pinned slots, events) is exercised too
  otgpu::GpuContext ctx(0);
  auto round = [&] {
    const auto r = otgpu::sinkhorn(ctx, p, o);
    (void)otgpu::barycentric_map(ctx, p, r);
    (void)otgpu::gradient_x(ctx, p, r);
    (void)otgpu::sample_partners(ctx, p, r, 7);
    return r;
  };
  const auto first = round();
  const std::int64_t after_first = ctx.allocations();
  EXPECT_GT(after_first, 0);
  for (int k = 0; k < 3; ++k) {
    const auto again = round();
    EXPECT_EQ(ctx.allocations(), after_first) << "round " << k;
    EXPECT_EQ(again.f, first.f);  // same work, same order: bitwise equal
  }

  // Calls without a context run on the thread's cached context: same rule.
  auto& tc = otgpu::runtime::thread_context(0);
  const auto r0 = otgpu::sinkhorn(p, o);
  (void)otgpu::barycentric_map(p, r0);
  const std::int64_t t0 = tc.allocations();
  for (int k = 0; k < 3; ++k) {
    const auto r = otgpu::sinkhorn(p, o);
    (void)otgpu::barycentric_map(p, r);
    EXPECT_EQ(tc.allocations(), t0) << "round " << k;
    EXPECT_EQ(r.f, r0.f);
  }
  EXPECT_EQ(r0.f, first.f);
}

/// Queues about `gib` GiB of device-to-device copies on s: work that keeps the stream
/// busy for milliseconds, so that a call not ordered after it would run first.
void queue_slow_work(cudaStream_t s, DeviceBuffer<char>& a, DeviceBuffer<char>& b, int rounds) {
  for (int k = 0; k < rounds; ++k) {
    cudaMemcpyAsync(b.data(), a.data(), a.bytes(), cudaMemcpyDeviceToDevice, s);
    cudaMemcpyAsync(a.data(), b.data(), a.bytes(), cudaMemcpyDeviceToDevice, s);
  }
}

TEST(RuntimeGpu, SynchronousSolveIsOrderedAfterTheCallersStream) {
  REQUIRE_GPU();
  const Clouds c(2, 400, 350, 3, 5);
  const auto o_gpu = fixed(Backend::cuda);
  const auto cpu = otgpu::sinkhorn(c.host(), fixed(Backend::cpu));
  // 1 GiB each (the constructor throws OutOfMemory when they do not fit).
  DeviceBuffer<char> big_a(std::size_t{1} << 30), big_b(std::size_t{1} << 30);
  double *pin_x = nullptr, *pin_y = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pin_x), c.x.size() * sizeof(double)),
            cudaSuccess);
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pin_y), c.y.size() * sizeof(double)),
            cudaSuccess);
  std::memcpy(pin_x, c.x.data(), c.x.size() * sizeof(double));
  std::memcpy(pin_y, c.y.data(), c.y.size() * sizeof(double));
  DeviceBuffer<double> dx(c.x.size()), dy(c.y.size());
  SinkhornProblem p;
  p.x = TensorView::device(dx.data(), {c.B, c.n, c.d});
  p.y = TensorView::device(dy.data(), {c.B, c.m, c.d});

  auto fill_nan_then_write = [&](cudaStream_t s) {
    // NaN bytes first, on the same stream: reading x or y before the copies land fails.
    cudaMemsetAsync(dx.data(), 0xFF, c.x.size() * sizeof(double), s);
    cudaMemsetAsync(dy.data(), 0xFF, c.y.size() * sizeof(double), s);
    queue_slow_work(s, big_a, big_b, 4);
    cudaMemcpyAsync(dx.data(), pin_x, c.x.size() * sizeof(double), cudaMemcpyHostToDevice, s);
    cudaMemcpyAsync(dy.data(), pin_y, c.y.size() * sizeof(double), cudaMemcpyHostToDevice, s);
  };

  // 1. A context on the caller's non-blocking stream.
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  {
    otgpu::GpuContext ctx(0, s);
    fill_nan_then_write(s);
    const auto r = otgpu::sinkhorn(ctx, p, o_gpu);
    expect_close(r.f, cpu.f, 0.5, "context stream f");
    expect_close(r.g, cpu.g, 0.5, "context stream g");
  }
  // 2. No context: the legacy default stream waits for the caller's blocking stream.
  cudaStream_t blocking = nullptr;
  ASSERT_EQ(cudaStreamCreate(&blocking), cudaSuccess);
  fill_nan_then_write(blocking);
  const auto r = otgpu::sinkhorn(p, o_gpu);
  expect_close(r.f, cpu.f, 0.5, "default stream f");
  cudaStreamSynchronize(s);
  cudaStreamSynchronize(blocking);
  cudaStreamDestroy(s);
  cudaStreamDestroy(blocking);
  cudaFreeHost(pin_x);
  cudaFreeHost(pin_y);
}

TEST(RuntimeGpu, SetStreamWhileWorkIsQueuedKeepsResultsExact) {
  REQUIRE_GPU();
  // Two problems of one shape share the workspace; the first is long, so a second
  // stream that did not wait for it would overwrite its staged data mid-solve.
  const Clouds c1(2, 1500, 1400, 3, 11), c2(2, 1500, 1400, 3, 21);
  const auto o = fixed(Backend::cuda, 60);
  const auto cpu1 = otgpu::sinkhorn(c1.host(), fixed(Backend::cpu, 60));
  const auto cpu2 = otgpu::sinkhorn(c2.host(), fixed(Backend::cpu, 60));
  DeviceBuffer<double> x1(c1.x), y1(c1.y), x2(c2.x), y2(c2.y);
  DeviceBuffer<float> f1(static_cast<std::size_t>(c1.B * c1.n)),
      g1(static_cast<std::size_t>(c1.B * c1.m)), f2(static_cast<std::size_t>(c2.B * c2.n)),
      g2(static_cast<std::size_t>(c2.B * c2.m));
  auto problem = [](const Clouds& c, const double* x, const double* y) {
    SinkhornProblem p;
    p.x = TensorView::device(x, {c.B, c.n, c.d});
    p.y = TensorView::device(y, {c.B, c.m, c.d});
    return p;
  };
  cudaStream_t s1 = nullptr, s2 = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
  {
    otgpu::GpuContext ctx(0, s1);
    otgpu::DeviceSinkhornOutputs o1{f1.data(), g1.data()}, o2{f2.data(), g2.data()};
    otgpu::sinkhorn_async(ctx, problem(c1, x1.data(), y1.data()), o, o1);
    ctx.set_stream(s2);
    otgpu::sinkhorn_async(ctx, problem(c2, x2.data(), y2.data()), o, o2);
    ASSERT_EQ(cudaStreamSynchronize(s2), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s1), cudaSuccess);
  }
  auto to_double = [](const std::vector<float>& v) {
    return std::vector<double>(v.begin(), v.end());
  };
  expect_close(to_double(f1.to_host()), cpu1.f, 0.5, "first stream f");
  expect_close(to_double(g1.to_host()), cpu1.g, 0.5, "first stream g");
  expect_close(to_double(f2.to_host()), cpu2.f, 0.5, "second stream f");
  expect_close(to_double(g2.to_host()), cpu2.g, 0.5, "second stream g");
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
}

TEST(RuntimeGpu, DerivedOutputsReuseTheSolveStateOfTheSameProblemOnly) {
  REQUIRE_GPU();
  const Clouds c(3, 260, 240, 2, 31);
  std::vector<double> a = uniform(static_cast<std::size_t>(c.B * c.n), 33, 0.2, 1.0);
  std::vector<double> b = uniform(static_cast<std::size_t>(c.B * c.m), 34, 0.2, 1.0);
  // Equal masses per problem (balanced), not 1, and different from problem to problem.
  for (std::int64_t k = 0; k < c.B; ++k) {
    double sa = 0, sb = 0;
    for (std::int64_t i = 0; i < c.n; ++i) sa += a[static_cast<std::size_t>(k * c.n + i)];
    for (std::int64_t j = 0; j < c.m; ++j) sb += b[static_cast<std::size_t>(k * c.m + j)];
    for (std::int64_t j = 0; j < c.m; ++j) b[static_cast<std::size_t>(k * c.m + j)] *= sa / sb;
  }
  auto p = c.host();
  p.a = TensorView::host(a.data(), {c.B, c.n});
  p.b = TensorView::host(b.data(), {c.B, c.m});
  const auto r = otgpu::sinkhorn(p, fixed(Backend::cuda, 50));
  ASSERT_NE(r.state, nullptr);
  SinkhornResult restage = r;
  restage.state.reset();
  const auto cpu_r = as_cpu(r);

  const auto map_state = otgpu::barycentric_map(p, r);
  const auto map_restaged = otgpu::barycentric_map(p, restage);
  const auto map_cpu = otgpu::barycentric_map(p, cpu_r);
  expect_close(map_state, map_cpu, 1.0, "map (state)");
  expect_close(map_restaged, map_cpu, 1.0, "map (staged again)");
  const auto grad_state = otgpu::gradient_x(p, r);
  const auto grad_cpu = otgpu::gradient_x(p, cpu_r);
  // Gradient tolerance of test_sinkhorn_gpu.cpp: 1e-4 |g| + 4e-6.
  expect_close(grad_state, grad_cpu, 0.02, "gradient (state)", 1e-4);
  expect_close(otgpu::gradient_x(p, restage), grad_cpu, 0.02, "gradient (staged again)", 1e-4);
  const auto part_state = otgpu::sample_partners(p, r, 99);
  const auto part_restaged = otgpu::sample_partners(p, restage, 99);
  std::size_t same = 0;
  for (std::size_t k = 0; k < part_state.size(); ++k) same += part_state[k] == part_restaged[k];
  EXPECT_GE(same, part_state.size() * 99 / 100);  // fp32 near-ties only

  // Another problem of the same shape (other data, other pointer) must not use r's
  // state: its outputs follow its own data.
  const Clouds other(3, 260, 240, 2, 41);
  auto q = other.host();
  q.a = p.a;
  q.b = p.b;
  expect_close(otgpu::barycentric_map(q, r), otgpu::barycentric_map(q, cpu_r), 1.0,
               "map of another problem");
}

TEST(RuntimeGpu, DivergenceReusesTheXYSolve) {
  REQUIRE_GPU();
  const Clouds c(1, 200, 180, 2, 51);
  const auto p = c.host();
  SinkhornOptions o;
  o.eps = 0.1;
  o.eps_relative = true;
  o.tol = 1e-4;
  o.max_iter = 3000;
  o.backend = Backend::cuda;
  const std::int64_t s0 = otgpu::detail::solve_count();
  const auto xy = otgpu::sinkhorn(p, o);
  const auto reused = otgpu::sinkhorn_divergence(p, xy, o);
  EXPECT_EQ(otgpu::detail::solve_count() - s0, 3);
  const std::int64_t s1 = otgpu::detail::solve_count();
  const auto full = otgpu::sinkhorn_divergence(p, o);
  EXPECT_EQ(otgpu::detail::solve_count() - s1, 3);
  auto oc = o;
  oc.backend = Backend::cpu;
  oc.tol = 1e-6;
  oc.max_iter = 20000;
  const auto cpu = otgpu::sinkhorn_divergence(p, oc);
  EXPECT_EQ(reused[0], full[0]);
  // Each term within 1e-3 of OT_eps (ConvergedSolvesAgree in test_sinkhorn_gpu.cpp).
  EXPECT_NEAR(reused[0], cpu[0], 2e-3 * std::abs(xy.problems[0].ot_eps));
}

TEST(RuntimeGpu, StridedHostViewsAreStagedRaw) {
  REQUIRE_GPU();
  const std::int64_t B = 2, n = 90, m = 70, d = 3;
  // x as f32 with the batch innermost ([n, d, B] in memory), y f64 padded rows, a
  // cost matrix read transposed.
  const auto xs = uniform(static_cast<std::size_t>(B * n * d), 61);
  std::vector<float> xf(xs.begin(), xs.end());
  const std::int64_t ypad = d + 2;
  const auto ys = uniform(static_cast<std::size_t>(B * m * ypad), 62, 0.2, 1.2);
  SinkhornProblem p;
  p.x.data = xf.data();
  p.x.dtype = otgpu::DType::f32;
  p.x.rank = 3;
  p.x.shape = {B, n, d};
  p.x.strides = {1, d * B, B};
  p.y.data = ys.data();
  p.y.dtype = otgpu::DType::f64;
  p.y.rank = 3;
  p.y.shape = {B, m, d};
  p.y.strides = {m * ypad, ypad, 1};
  const auto gpu = otgpu::sinkhorn(p, fixed(Backend::cuda));
  const auto cpu = otgpu::sinkhorn(p, fixed(Backend::cpu));
  expect_close(gpu.f, cpu.f, 0.5, "strided points f");
  expect_close(gpu.g, cpu.g, 0.5, "strided points g");
  expect_close(otgpu::barycentric_map(p, gpu), otgpu::barycentric_map(p, as_cpu(gpu)), 1.0,
               "strided points map");

  const auto cs = uniform(static_cast<std::size_t>(B * n * m), 63, 0.0, 2.0);
  SinkhornProblem pc;
  pc.cost_kind = CostKind::matrix;
  pc.cost.data = cs.data();
  pc.cost.dtype = otgpu::DType::f64;
  pc.cost.rank = 3;
  pc.cost.shape = {B, n, m};
  pc.cost.strides = {n * m, 1, n};  // each problem's [m, n] block read transposed
  const auto gc = otgpu::sinkhorn(pc, fixed(Backend::cuda));
  const auto cc = otgpu::sinkhorn(pc, fixed(Backend::cpu));
  expect_close(gc.f, cc.f, 1.0, "transposed cost f");
  expect_close(gc.g, cc.g, 1.0, "transposed cost g");
}

/// Problems [begin, end) of a batched result's f (n per problem).
std::vector<double> rows_of(const std::vector<double>& v, std::int64_t per, std::int64_t begin,
                            std::int64_t end) {
  return {v.begin() + begin * per, v.begin() + end * per};
}

TEST(RuntimeGpu, BatchesAboveTheGridLimitRunOnEveryPath) {
  REQUIRE_GPU();
  const std::int64_t B = 70000, n = 5, m = 4, d = 2;
  const Clouds c(B, n, m, d, 71);
  const auto p = c.host();
  const auto o = fixed(Backend::cuda, 25);
  const auto gpu = otgpu::sinkhorn(p, o);
  const auto cpu = otgpu::sinkhorn(p, fixed(Backend::cpu, 25));
  ASSERT_EQ(gpu.problems.size(), static_cast<std::size_t>(B));
  expect_close(gpu.f, cpu.f, 0.5, "B=70000 f");
  expect_close(gpu.g, cpu.g, 0.5, "B=70000 g");
  for (std::int64_t b : {std::int64_t{0}, std::int64_t{65534}, std::int64_t{65535}, B - 1}) {
    EXPECT_NEAR(gpu.problems[static_cast<std::size_t>(b)].ot_eps,
                cpu.problems[static_cast<std::size_t>(b)].ot_eps,
                1e-4 + 1e-4 * std::abs(cpu.problems[static_cast<std::size_t>(b)].ot_eps))
        << "problem " << b;
  }
  // Derived outputs from the state (chunked) and staged again.
  const auto map_cpu = otgpu::barycentric_map(p, as_cpu(gpu));
  expect_close(otgpu::barycentric_map(p, gpu), map_cpu, 1.0, "B=70000 map (state)");
  SinkhornResult restage = gpu;
  restage.state.reset();
  expect_close(otgpu::barycentric_map(p, restage), map_cpu, 1.0, "B=70000 map (staged)");
  expect_close(otgpu::gradient_x(p, gpu), otgpu::gradient_x(p, as_cpu(gpu)), 0.2,
               "B=70000 gradient", 1e-4);
  // Partners are keyed by the problem's index in the whole batch, not in its chunk:
  // the CPU draws the same ones (up to fp32 near-ties), past the boundary too.
  const auto part_gpu = otgpu::sample_partners(p, gpu, 5);
  const auto part_cpu = otgpu::sample_partners(p, as_cpu(gpu), 5);
  ASSERT_EQ(part_gpu.size(), part_cpu.size());
  std::size_t same = 0, same_tail = 0;
  const auto tail = static_cast<std::size_t>(65535 * n);
  for (std::size_t k = 0; k < part_gpu.size(); ++k) {
    same += part_gpu[k] == part_cpu[k];
    if (k >= tail) same_tail += part_gpu[k] == part_cpu[k];
  }
  EXPECT_GE(static_cast<double>(same), 0.97 * static_cast<double>(part_gpu.size()));
  EXPECT_GE(static_cast<double>(same_tail), 0.97 * static_cast<double>(part_gpu.size() - tail));

  // Async on device views: the same numbers as the synchronous solve.
  DeviceBuffer<double> dx(c.x), dy(c.y);
  DeviceBuffer<float> df(static_cast<std::size_t>(B * n)), dg(static_cast<std::size_t>(B * m)),
      dmap(static_cast<std::size_t>(B * n * d));
  DeviceBuffer<double> dot(static_cast<std::size_t>(B));
  SinkhornProblem pd;
  pd.x = TensorView::device(dx.data(), {B, n, d});
  pd.y = TensorView::device(dy.data(), {B, m, d});
  otgpu::GpuContext ctx(0);
  otgpu::DeviceSinkhornOutputs out{df.data(), dg.data()};
  out.ot_eps = dot.data();
  otgpu::sinkhorn_async(ctx, pd, o, out);
  otgpu::barycentric_map_async(ctx, pd, o, dg.data(), dmap.data());
  ctx.synchronize();
  const auto fa = df.to_host();
  expect_close(std::vector<double>(fa.begin(), fa.end()), gpu.f, 0.01, "B=70000 async f");
  const auto ma = dmap.to_host();
  expect_close(std::vector<double>(ma.begin(), ma.end()), map_cpu, 1.0, "B=70000 async map");
  const auto ot = dot.to_host();
  EXPECT_NEAR(ot[static_cast<std::size_t>(B - 1)], gpu.problems.back().ot_eps,
              1e-5 + 1e-5 * std::abs(gpu.problems.back().ot_eps));

  // Dense costs (eps relative to the mean cost: per-problem means across chunks).
  const std::int64_t nc = 4, mc = 3;
  const auto cs = uniform(static_cast<std::size_t>(B * nc * mc), 72, 0.0, 2.0);
  SinkhornProblem pc;
  pc.cost_kind = CostKind::matrix;
  pc.cost = TensorView::host(cs.data(), {B, nc, mc});
  const auto gc = otgpu::sinkhorn(pc, o);
  const auto cc = otgpu::sinkhorn(pc, fixed(Backend::cpu, 25));
  expect_close(gc.f, cc.f, 1.0, "B=70000 dense f");
  expect_close(rows_of(gc.g, mc, 65530, 65540), rows_of(cc.g, mc, 65530, 65540), 1.0,
               "B=70000 dense g across the chunk boundary");
}

// Tiny problems (named Small so that scripts/gpu-check runs it under memcheck): raw
// staging of host views, the kept state, chunks across the 65,535 boundary, async.
TEST(RuntimeGpu, SmallProblemsAcrossTheChunkBoundary) {
  REQUIRE_GPU();
  const std::int64_t B = 65537, n = 3, m = 2, d = 1;
  const Clouds c(B, n, m, d, 91);
  std::vector<double> a = uniform(static_cast<std::size_t>(B * n), 92, 0.2, 1.0);
  auto p = c.host();
  p.a = TensorView::host(a.data(), {B, n});
  auto o = fixed(Backend::cuda, 10);
  o.rho_a = o.rho_b = 0.5;  // unbalanced: the masses of a and b differ
  auto oc = o;
  oc.backend = Backend::cpu;
  const auto gpu = otgpu::sinkhorn(p, o);
  const auto cpu = otgpu::sinkhorn(p, oc);
  expect_close(gpu.f, cpu.f, 0.5, "small f");
  expect_close(gpu.g, cpu.g, 0.5, "small g");
  SinkhornResult restage = gpu;
  restage.state.reset();
  const auto grad_cpu = otgpu::gradient_x(p, as_cpu(gpu));
  expect_close(otgpu::gradient_x(p, gpu), grad_cpu, 0.2, "small gradient (state)", 1e-4);
  expect_close(otgpu::gradient_x(p, restage), grad_cpu, 0.2, "small gradient (staged)", 1e-4);
  EXPECT_EQ(otgpu::sample_partners(p, gpu, 3).size(), static_cast<std::size_t>(B * n));

  DeviceBuffer<double> dx(c.x), dy(c.y), da(a);
  DeviceBuffer<float> df(static_cast<std::size_t>(B * n)), dg(static_cast<std::size_t>(B * m)),
      dgrad(static_cast<std::size_t>(B * n * d));
  SinkhornProblem pd;
  pd.x = TensorView::device(dx.data(), {B, n, d});
  pd.y = TensorView::device(dy.data(), {B, m, d});
  pd.a = TensorView::device(da.data(), {B, n});
  otgpu::GpuContext ctx(0);
  otgpu::sinkhorn_async(ctx, pd, o, {df.data(), dg.data()});
  otgpu::gradient_x_async(ctx, pd, o, df.data(), dg.data(), dgrad.data());
  ctx.synchronize();
  const auto fa = df.to_host();
  expect_close(std::vector<double>(fa.begin(), fa.end()), gpu.f, 0.01, "small async f");
  const auto ga = dgrad.to_host();
  expect_close(std::vector<double>(ga.begin(), ga.end()), grad_cpu, 0.2, "small async gradient",
               1e-4);
}

TEST(RuntimeGpu, OnlinePathAboveTheGridLimit) {
  REQUIRE_GPU();
  // n, m > 512: the online kernels (problem index on grid y). The CPU checks the
  // problems around the chunk boundary only (views into the same memory).
  const std::int64_t B = 65540, n = 520, m = 516, d = 2;
  const Clouds c(B, n, m, d, 81);
  const auto o = fixed(Backend::cuda, 4);
  const auto gpu = otgpu::sinkhorn(c.host(), o);
  const std::int64_t lo = 65532;
  SinkhornProblem sub;
  sub.x = TensorView::host(c.x.data() + lo * n * d, {B - lo, n, d});
  sub.y = TensorView::host(c.y.data() + lo * m * d, {B - lo, m, d});
  const auto cpu = otgpu::sinkhorn(sub, fixed(Backend::cpu, 4));
  expect_close(rows_of(gpu.f, n, lo, B), cpu.f, 0.5, "online f across the chunk boundary");
  expect_close(rows_of(gpu.g, m, lo, B), cpu.g, 0.5, "online g across the chunk boundary");
}

}  // namespace

#else

TEST(RuntimeGpu, RequiresCudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif  // OTGPU_WITH_CUDA
