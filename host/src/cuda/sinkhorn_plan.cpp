// The CUDA side of the planner: measures the device (attributes, the occupancy of the
// compiled online half-step kernels, conditional-node support) for the pure planner
// (otgpu_host/planner.h), and turns its answer into the driver's DevicePlan and the
// pointers of one workspace (the carve-up is planner::layout_workspace).
#include <map>
#include <mutex>

#include "sinkhorn_internal.h"

namespace otgpu {

namespace planner {

DeviceProps query_device(int device) {
  runtime::require_device(device);
  DeviceProps p = cuda_backend::device_planner_props(device);
  // cudaMemGetInfo reports the current device: make it `device` for the query.
  int current = 0;
  OTGPU_CUDA_CHECK(cudaGetDevice(&current));
  OTGPU_CUDA_CHECK(cudaSetDevice(device));
  std::size_t free_b = 0, total_b = 0;
  const cudaError_t st = cudaMemGetInfo(&free_b, &total_b);
  OTGPU_CUDA_CHECK(cudaSetDevice(current));
  OTGPU_CUDA_CHECK(st);
  p.memory_free = free_b;
  p.memory_total = total_b;
  return p;
}

}  // namespace planner

namespace cuda_backend {

int padded_dim(std::int64_t d) { return detail::padded_dim(d); }

/// Number of scaling iterations before eps_t reaches the target (the same for every
/// problem: relative eps scales eps and eps_init alike).
int scaling_steps(const SinkhornOptions& o) {
  return detail::scaling_steps(o.eps, o.eps_init, o.eps_decay, o.max_iter);
}

namespace {

/// Occupancy of the tensor-core half-step (3xTF32) for padded dimension dp.
int mma_occupancy(int dp) {
  const kernels::OnlineKernelHandle h = kernels::online_half_step_mma_handle(dp);
  int blocks = 0;
  OTGPU_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, h.function, kernels::mma_geometry::kThreads, h.dynamic_smem));
  return blocks;
}

/// Measures what the planner needs of `device` (the caller made it current).
planner::DeviceProps measure(int device) {
  const runtime::DeviceProps& rt = runtime::device_props(device);
  planner::DeviceProps p;
  p.name = rt.name;
  p.assumed = false;
  p.sm_count = rt.sm_count;
  p.max_threads_per_sm = rt.max_threads_per_sm;
  p.smem_per_block_optin = rt.smem_per_block_optin;
  p.smem_per_sm = rt.smem_per_sm;
  p.memory_total = rt.total_memory;
  p.memory_free = 0;  // per call; the allocation reports a shortage
  p.max_batch_per_launch = std::min<std::int64_t>(max_batch_per_launch(), rt.max_grid_y);
  for (int dp : {1, 2, 4, 8, 16, 32, 64}) {
    const kernels::OnlineKernelHandle h = kernels::online_half_step_handle(dp);
    int blocks = 0;
    OTGPU_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &blocks, h.function, kernels::geometry::kOnlineThreads, h.dynamic_smem));
    p.online_occupancy.push_back({dp, blocks});
  }
  for (int dp : {16, 32, 64}) p.mma_occupancy.push_back({dp, mma_occupancy(dp)});
  // Rates: the per-SM figures of the Hopper SM (16 MUFU exp2, 128 fp32 FMA per clock)
  // at this device's SM count and clock; bandwidth from the memory clock and bus.
  int clock_khz = 0, mem_khz = 0, bus_bits = 0;
  (void)cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device);
  (void)cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, device);
  (void)cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device);
  (void)cudaGetLastError();  // attributes a driver no longer reports read as 0
  const planner::DeviceProps h200 = planner::h200_assumed();
  const double clock = clock_khz > 0 ? clock_khz * 1e3 : 1.98e9;
  p.exp_per_s = p.sm_count * 16.0 * clock;
  p.fp32_per_s = p.sm_count * 128.0 * clock;
  // Dense tensor-core rates of the Hopper SM: 2048 (TF32) and 4096 (bf16) FLOP/clock.
  p.tf32_flops_per_s = p.sm_count * 2048.0 * clock;
  p.bf16_flops_per_s = p.sm_count * 4096.0 * clock;
  p.bytes_per_s =
      mem_khz > 0 && bus_bits > 0 ? 2.0 * mem_khz * 1e3 * bus_bits / 8.0 : h200.bytes_per_s;
  p.conditional_nodes = kernels::loop_conditional_supported();
  return p;
}

/// Occupancy of the dynamic-dimension kernel for a padded dp above 64.
int dyn_occupancy(int dp) {
  const kernels::OnlineKernelHandle h = kernels::online_half_step_handle(dp);
  int blocks = 0;
  OTGPU_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, h.function, kernels::geometry::kOnlineThreads, h.dynamic_smem));
  return blocks;
}

std::mutex g_props_mutex;
std::map<int, std::unique_ptr<planner::DeviceProps>> g_props;

/// The planner's view of `device` with the occupancy of padded dimension dp measured.
planner::DeviceProps props_for(int device, int dp) {
  planner::DeviceProps p = device_planner_props(device);
  if (dp > kernels::geometry::kOnlineMaxFixedDim) {
    const std::size_t smem = kernels::geometry::online_smem_bytes(dp);
    // Too large a tile: the planner reports it (InvalidArgument naming d).
    if (smem <= p.smem_per_block_optin) p.online_occupancy.push_back({dp, dyn_occupancy(dp)});
    if (dp % 4 == 0) p.mma_occupancy.push_back({dp, mma_occupancy(dp)});
  }
  return p;
}

}  // namespace

const planner::DeviceProps& device_planner_props(int device) {
  std::lock_guard<std::mutex> lock(g_props_mutex);
  auto& slot = g_props[device];
  if (!slot) {
    int current = 0;
    OTGPU_CUDA_CHECK(cudaGetDevice(&current));
    OTGPU_CUDA_CHECK(cudaSetDevice(device));
    try {
      slot = std::make_unique<planner::DeviceProps>(measure(device));
    } catch (...) {
      cudaSetDevice(current);
      throw;
    }
    OTGPU_CUDA_CHECK(cudaSetDevice(current));
  }
  return *slot;
}

bool small_path(const DeviceSolve& s, int device) {
  if (!s.points() || s.n > kernels::geometry::kSmallMaxSide ||
      s.m > kernels::geometry::kSmallMaxSide || s.dp > kernels::geometry::kSmallMaxOnlineDim)
    return false;
  const auto& props = device_planner_props(device);
  // The planner's rule (make_plan): the small kernel only when it fits and keeps enough
  // SMs busy; otherwise the batched online kernels take the problem.
  return kernels::geometry::small_variant(true, s.n, s.m, s.dp, props.smem_per_block_optin).fits &&
         planner::small_kernel_preferred(s.B, s.n, s.m, s.dp, props);
}

int device_sm_count(int device) { return device_planner_props(device).sm_count; }

SolveSizes solve_sizes(CostKind cost, std::int64_t B, std::int64_t n, std::int64_t m, int dp, int K,
                       bool stage_cost, int device) {
  planner::Request r;
  r.B = B;
  r.n = n;
  r.m = m;
  r.d = dp > 0 ? dp : 1;
  r.cost = cost;
  r.scaling_steps = K;
  r.stage_cost = stage_cost;
  const planner::Plan plan = planner::make_plan(r, props_for(device, dp));
  const planner::WorkspaceLayout w = planner::layout_workspace(plan, true, false);
  SolveSizes z;
  const bool pts = cost != CostKind::matrix;
  z.X = w.X.bytes / sizeof(float);
  z.Y = w.Y.bytes / sizeof(float);
  z.C = w.C.bytes / sizeof(float);
  z.nB = static_cast<std::size_t>(B * n);
  z.mB = static_cast<std::size_t>(B * m);
  z.B = static_cast<std::size_t>(B);
  z.tab = static_cast<std::size_t>(K + 1) * z.B;
  z.col_ws = w.col_ws.bytes;
  z.partials = w.partials.bytes / sizeof(float);
  z.f_splits = pts ? plan.f.splits : 1;
  z.g_splits = pts ? plan.g.splits : 1;
  return z;
}

DevicePlan plan_device(const SinkhornProblem& problem, const SinkhornOptions& o,
                       const detail::SinkhornShape& shape, int device, bool solve) {
  DevicePlan pl;
  pl.shape = shape;
  pl.cost = problem.cost_kind;
  pl.dp = problem.cost_kind == CostKind::matrix ? 0 : padded_dim(shape.d);
  pl.K = solve ? scaling_steps(o) : 0;
  pl.stage_cost = problem.cost_kind == CostKind::matrix &&
                  !(problem.cost.dtype == DType::f32 && problem.cost.is_contiguous() &&
                    (problem.cost.rank == 3 || shape.batch == 1));
  const DType dtype = problem.cost_kind == CostKind::matrix ? problem.cost.dtype : problem.x.dtype;
  planner::Request r = planner::make_request(shape.batch, shape.n, shape.m,
                                             problem.cost_kind == CostKind::matrix ? 0 : shape.d,
                                             problem.cost_kind, dtype, o);
  r.scaling_steps = pl.K;
  r.stage_cost = pl.stage_cost;
  pl.accel = solve && (o.eps_init == kAuto ||
                       (o.acceleration == SinkhornAcceleration::overrelax && o.check_every > 0));
  pl.plan = planner::make_plan(r, props_for(device, pl.dp));
  return pl;
}

namespace {

template <class T>
T* at(unsigned char* base, const planner::Span& s) {
  return base != nullptr && s.bytes > 0 ? reinterpret_cast<T*>(base + s.offset) : nullptr;
}

}  // namespace

/// Lays out the arrays (or only counts bytes). own_fg: F and G live in the buffer
/// (else the caller provides them); derived: scratch of the derived outputs.
Carved carve(Carver& cv, const DevicePlan& pl, bool own_fg, bool derived) {
  const auto& sh = pl.shape;
  const planner::WorkspaceLayout w = planner::layout_workspace(pl.plan, own_fg, derived);
  unsigned char* base = cv.take<unsigned char>(w.total);
  Carved c;
  DeviceSolve& d = c.d;
  d.cost = pl.cost;
  d.B = sh.batch;
  d.n = sh.n;
  d.m = sh.m;
  d.dp = pl.dp;
  d.K = pl.K;
  d.X = at<float>(base, w.X);
  d.Y = at<float>(base, w.Y);
  d.C = at<float>(base, w.C);
  d.logA = at<float>(base, w.logA);
  d.logB = at<float>(base, w.logB);
  d.a = at<double>(base, w.a);
  d.b = at<double>(base, w.b);
  d.Ft = at<float>(base, w.Ft);
  d.eps_tab = at<float>(base, w.eps_tab);
  d.lam_a_tab = at<float>(base, w.lam_a_tab);
  d.lam_b_tab = at<float>(base, w.lam_b_tab);
  d.small_eps = at<float>(base, w.small_eps);
  d.small_eps_init = at<float>(base, w.small_eps_init);
  d.active = at<int>(base, w.active);
  d.iters = at<int>(base, w.iters);
  d.count = at<int>(base, w.count);
  d.res = at<double>(base, w.res);
  d.small_res = at<float>(base, w.small_res);
  d.small_conv = at<int>(base, w.small_conv);
  d.col_ws = at<unsigned char>(base, w.col_ws);
  d.col_ws_bytes = w.col_ws.bytes;
  d.cmean = at<float>(base, w.cmean);
  d.lse = at<float>(base, w.lse);
  d.row_mass = at<float>(base, w.row_mass);
  d.row_cost = at<float>(base, w.row_cost);
  d.out4 = at<double>(base, w.out4);
  d.f_splits = pl.plan.f.splits;
  d.g_splits = pl.plan.g.splits;
  d.partials = at<float>(base, w.partials);
  d.partials_floats = w.partials.bytes / sizeof(float);
  d.loop = at<int>(base, w.loop_state);
  d.tensor_cores = pl.plan.tensor_cores;
  d.precision = pl.plan.precision;
  if (own_fg) {
    d.F = at<float>(base, w.F);
    d.G = at<float>(base, w.G);
  }
  c.center = at<double>(base, w.center);
  c.mean = at<double>(base, w.mean);
  c.bad = at<unsigned long long>(base, w.bad);
  c.mass = at<double>(base, w.mass);
  if (derived) {
    c.T = at<float>(base, w.T);
    c.ratio = at<double>(base, w.ratio);
  }
  if (pl.accel) {
    // After the planner's layout: the accelerated loop's per-problem state.
    const auto B = static_cast<std::size_t>(sh.batch);
    const auto nB = B * static_cast<std::size_t>(sh.n), mB = B * static_cast<std::size_t>(sh.m);
    AccelArrays& a = d.acc;
    a.eps_cur = cv.take<float>(B);
    a.lam_a_cur = cv.take<float>(B);
    a.lam_b_cur = cv.take<float>(B);
    a.level_iters = cv.take<int>(B);
    a.range = cv.take<unsigned>(2 * B);
    a.scaling = cv.take<int>(1);
    a.omega = cv.take<double>(B);
    a.prev_res = cv.take<double>(B);
    a.prev_rate = cv.take<double>(B);
    a.failures = cv.take<int>(B);
    a.restore = cv.take<int>(B);
    a.F_prev = cv.take<float>(nB);
    a.G_prev = cv.take<float>(mB);
    a.F_saved = cv.take<float>(nB);
    a.G_saved = cv.take<float>(mB);
    a.Ft_saved = cv.take<float>(nB);
  }
  return c;
}

std::size_t carved_bytes(const DevicePlan& pl, bool own_fg, bool derived) {
  Carver counter(nullptr);
  (void)carve(counter, pl, own_fg, derived);
  return counter.used();
}

}  // namespace cuda_backend

}  // namespace otgpu
