// Shapes and workspace layout of a CUDA Sinkhorn solve: padded dimension, the
// scaling steps, the kernel choice and the carve-up of one workspace buffer.
#include "sinkhorn_internal.h"

namespace otgpu::cuda_backend {

int padded_dim(std::int64_t d) { return detail::padded_dim(d); }

/// Number of scaling iterations before eps_t reaches the target (the same for every
/// problem: relative eps scales eps and eps_init alike).
int scaling_steps(const SinkhornOptions& o) {
  return detail::scaling_steps(o.eps, o.eps_init, o.eps_decay, o.max_iter);
}

bool small_path(const DeviceSolve& s, int device) {
  return s.points() && s.n <= 512 && s.m <= 512 && s.dp <= 32 &&
         kernels::small_kernel_fits(s.cost, s.n, s.m, s.dp, device);
}

/// Floats of split partials the f- and g-half-steps of this shape need.
std::size_t partials_floats(CostKind cost, std::int64_t B, std::int64_t n, std::int64_t m, int dp,
                            int sm_count) {
  if (cost == CostKind::matrix) return 0;
  kernels::OnlinePass p;
  p.cost = cost;
  p.B = B;
  p.dp = dp;
  p.n_rows = n;
  p.n_cols = m;
  p.splits = kernels::online_splits(p, sm_count);
  const std::size_t f = kernels::online_partials_floats(p);
  p.n_rows = m;
  p.n_cols = n;
  p.splits = kernels::online_splits(p, sm_count);
  return std::max(f, kernels::online_partials_floats(p));
}

int device_sm_count(int device) {
  int sms = 0;
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

SolveSizes solve_sizes(CostKind cost, std::int64_t B, std::int64_t n, std::int64_t m, int dp, int K,
                       bool stage_cost, int sm_count) {
  SolveSizes z;
  const bool pts = cost != CostKind::matrix;
  z.partials = partials_floats(cost, B, n, m, dp, sm_count);
  z.X = pts ? static_cast<std::size_t>(B * n * dp) : 0;
  z.Y = pts ? static_cast<std::size_t>(B * m * dp) : 0;
  z.C = !pts && stage_cost ? static_cast<std::size_t>(B * n * m) : 0;
  z.nB = static_cast<std::size_t>(B * n);
  z.mB = static_cast<std::size_t>(B * m);
  z.B = static_cast<std::size_t>(B);
  z.tab = static_cast<std::size_t>(K + 1) * z.B;
  z.col_ws = pts ? 0 : kernels::dense_col_workspace_bytes(B, n, m);
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
  pl.sm_count = device_sm_count(device);
  return pl;
}

/// Lays out the arrays (or only counts bytes). own_fg: F and G live in the buffer
/// (else the caller provides them); derived: scratch of the derived outputs.
Carved carve(Carver& cv, const DevicePlan& pl, bool own_fg, bool derived) {
  const auto& sh = pl.shape;
  const SolveSizes z =
      solve_sizes(pl.cost, sh.batch, sh.n, sh.m, pl.dp, pl.K, pl.stage_cost, pl.sm_count);
  Carved c;
  DeviceSolve& d = c.d;
  d.cost = pl.cost;
  d.B = sh.batch;
  d.n = sh.n;
  d.m = sh.m;
  d.dp = pl.dp;
  d.K = pl.K;
  d.X = cv.take<float>(z.X);
  d.Y = cv.take<float>(z.Y);
  d.C = cv.take<float>(z.C);
  d.logA = cv.take<float>(z.nB);
  d.logB = cv.take<float>(z.mB);
  d.a = cv.take<double>(z.nB);
  d.b = cv.take<double>(z.mB);
  d.Ft = cv.take<float>(z.nB);
  d.eps_tab = cv.take<float>(z.tab);
  d.lam_a_tab = cv.take<float>(z.tab);
  d.lam_b_tab = cv.take<float>(z.tab);
  d.small_eps = cv.take<float>(z.B);
  d.small_eps_init = cv.take<float>(z.B);
  d.active = cv.take<int>(z.B);
  d.iters = cv.take<int>(z.B);
  d.count = cv.take<int>(1);
  d.res = cv.take<double>(z.B);
  d.small_res = cv.take<float>(z.B);
  d.small_conv = cv.take<int>(z.B);
  d.col_ws = cv.take<unsigned char>(z.col_ws);
  d.col_ws_bytes = z.col_ws;
  d.cmean = cv.take<float>(z.nB);
  d.lse = cv.take<float>(z.nB);
  d.row_mass = cv.take<float>(z.nB);
  d.row_cost = cv.take<float>(z.nB);
  d.out4 = cv.take<double>(4 * z.B);
  d.sm_count = pl.sm_count;
  d.partials = cv.take<float>(z.partials);
  d.partials_floats = z.partials;
  if (own_fg) {
    d.F = cv.take<float>(z.nB);
    d.G = cv.take<float>(z.mB);
  }
  const auto dp1 = static_cast<std::size_t>(std::max(pl.dp, 1));
  c.center = cv.take<double>(z.B * dp1);
  c.mean = cv.take<double>(z.B);
  c.bad = cv.take<unsigned long long>(4);
  c.mass = cv.take<double>(2 * z.B);
  if (derived) {
    c.T = cv.take<float>(z.nB * dp1);
    c.ratio = cv.take<double>(z.B);
  }
  return c;
}

std::size_t carved_bytes(const DevicePlan& pl, bool own_fg, bool derived) {
  Carver counter(nullptr);
  (void)carve(counter, pl, own_fg, derived);
  return counter.used();
}

}  // namespace otgpu::cuda_backend
