// L1: host-visible latency of a converged sinkhorn_async call (otgpu/device.h) with a
// cap far above the iterations it needs (max_iter 100,000; it converges in about a
// hundred). Before: every iteration of the cap is launched from the host and retired
// problems exit at once (OTGPU_LOOP=plain). After: the check periods run in a
// conditional WHILE graph node that the device stops at convergence. Two figures per
// row: the enqueue time (host time inside the call) and the end-to-end time (CUDA
// events around the call on its stream).
#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime_api.h>

#include "otgpu/device.h"
#include "otgpu_host/planner.h"
#endif

namespace otgpu::bench {

namespace {

struct Shape {
  std::int64_t B, n, d;
};

// The shape (B = 64, n = 512, d = 32: the small kernel, whose loop is already
// one launch) and one the online kernels run.
constexpr Shape kShapes[] = {{64, 512, 32}, {64, 2048, 32}};
constexpr int kMaxIter = 100000;

Row skipped_row(const Shape& s, const char* why) {
  Row r;
  r.workload = "L1";
  r.solver = "cuda-async";
  r.backend = "cuda";
  r.params = {{"B", s.B}, {"n", s.n}, {"m", s.n}, {"d", s.d}, {"max_iter", kMaxIter}};
  r.time_unit = "ms/call";
  r.note = why;
  return r;
}

#ifdef OTGPU_WITH_CUDA

void check(cudaError_t st, const char* what) {
  if (st != cudaSuccess)
    throw CudaError(fmt::format("bench L1: {}: {}", what, cudaGetErrorString(st)),
                    static_cast<int>(st));
}

template <class T>
struct Buffer {
  T* p = nullptr;
  explicit Buffer(std::size_t count) {
    check(cudaMalloc(reinterpret_cast<void**>(&p), count * sizeof(T)), "cudaMalloc");
  }
  ~Buffer() { cudaFree(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

/// Sets OTGPU_LOOP for the scope (the plain "before" loop) and restores it.
struct LoopEnv {
  explicit LoopEnv(bool plain) {
    if (plain) setenv("OTGPU_LOOP", "plain", 1);
  }
  ~LoopEnv() { unsetenv("OTGPU_LOOP"); }
  LoopEnv(const LoopEnv&) = delete;
  LoopEnv& operator=(const LoopEnv&) = delete;
};

void run_shape(const Context& ctx, const Shape& s, std::vector<Row>& rows) {
  const auto nd = static_cast<std::size_t>(s.B * s.n * s.d);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> x(nd), y(nd);
  for (auto& v : x) v = u(rng);
  for (auto& v : y) v = u(rng) + 0.1f;
  Buffer<float> dx(nd), dy(nd), df(static_cast<std::size_t>(s.B * s.n)),
      dg(static_cast<std::size_t>(s.B * s.n));
  Buffer<int> dit(static_cast<std::size_t>(s.B));
  check(cudaMemcpy(dx.p, x.data(), nd * sizeof(float), cudaMemcpyHostToDevice), "upload x");
  check(cudaMemcpy(dy.p, y.data(), nd * sizeof(float), cudaMemcpyHostToDevice), "upload y");

  SinkhornProblem p;
  p.x = TensorView::device(dx.p, {s.B, s.n, s.d});
  p.y = TensorView::device(dy.p, {s.B, s.n, s.d});
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.tol = 1e-3;
  o.check_every = 10;
  o.max_iter = kMaxIter;
  o.backend = Backend::cuda;
  DeviceSinkhornOutputs out;
  out.f = df.p;
  out.g = dg.p;
  out.iterations = dit.p;

  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  try {
    GpuContext gctx(0, stream);
    gctx.reserve(sinkhorn_async_workspace_bytes(p, o));
    for (const bool plain : {true, false}) {
      LoopEnv env(plain);
      double enqueue_ms = 0;
      const double total_ms = median_ms(ctx, [&] {
        check(cudaEventRecord(start, stream), "record");
        const auto t0 = std::chrono::steady_clock::now();
        sinkhorn_async(gctx, p, o, out);
        const auto t1 = std::chrono::steady_clock::now();
        check(cudaEventRecord(stop, stream), "record");
        check(cudaEventSynchronize(stop), "sync");
        enqueue_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
        float ms = 0;
        check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
        return static_cast<double>(ms);
      });
      const std::string loop = planner::last_loop_strategy();
      std::vector<int> iters(static_cast<std::size_t>(s.B));
      check(cudaMemcpy(iters.data(), dit.p, iters.size() * sizeof(int), cudaMemcpyDeviceToHost),
            "iterations");
      int most = 0;
      for (int it : iters) most = it > most ? it : most;
      Row r;
      r.workload = "L1";
      r.solver = plain ? "cuda-async-plain" : "cuda-async-graph";
      r.backend = "cuda";
      r.params = {{"B", s.B},           {"n", s.n},
                  {"m", s.n},           {"d", s.d},
                  {"eps", o.eps},       {"max_iter", kMaxIter},
                  {"iterations", most}, {"enqueue_ms", enqueue_ms},
                  {"loop", loop}};
      r.ms = total_ms;
      r.time_unit = "ms/call";
      r.note = fmt::format(
          "end to end (events); enqueue {:.3f} ms (last run); {} iterations; "
          "loop: {}",
          enqueue_ms, most, loop);
      rows.push_back(std::move(r));
    }
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
}

#endif

void run_l1(const Context& ctx, std::vector<Row>& rows) {
  for (const Shape& s : kShapes) {
    if (ctx.cpu_only) {
      rows.push_back(skipped_row(s, "skipped (--backend cpu)"));
      continue;
    }
    if (!ctx.has_gpu) {
      rows.push_back(skipped_row(s, "skipped (needs a GPU)"));
      continue;
    }
#ifdef OTGPU_WITH_CUDA
    run_shape(ctx, s, rows);
#endif
  }
}

}  // namespace

void add_latency_workloads(std::vector<Workload>& out) {
  out.push_back({"L1",
                 "latency of a converged sinkhorn_async call (max_iter 100000): plain launches "
                 "vs the conditional-node loop",
                 {"quick", "full"},
                 run_l1});
}

}  // namespace otgpu::bench
