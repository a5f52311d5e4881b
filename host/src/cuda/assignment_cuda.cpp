// The CUDA exact assignment driver, on a runtime::Context (the caller's GpuContext or
// the thread's cached one). Stages the costs into padded square matrices in the
// context's workspace (a cost matrix gathered as it is; point clouds through one
// cuBLAS fp32 GEMM for <x_i, y_j> plus an epilogue, on clouds centred on the mean of y
// before rounding for the translation-invariant costs), then runs the batched auction of
// kernels/src/assignment.cu, which also certifies every problem. Host views go
// through the context's pinned staging memory. The synchronous path re-solves on the
// CPU (fp64 Jonker-Volgenant, on the staged costs) any problem the auction could not
// finish, so that it either returns that problem's exact optimum or throws Infeasible.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "cpu_assignment.h"
#include "gpu_context_impl.h"
#include "otgpu/error.h"
#include "otgpu_host/assignment_cuda.h"
#include "otgpu_host/gpu_runtime.h"
#include "otgpu_kernels/assignment.h"
#include "otgpu_kernels/centered_gather.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/cuda_libs.h"
#include "otgpu_kernels/gather.h"
#include "view_staging.h"

namespace otgpu::cuda_backend {

namespace {

struct Buffers {
  unsigned char* raw = nullptr;
  float *x = nullptr, *y = nullptr, *xn = nullptr, *yn = nullptr, *g = nullptr;
  double* center = nullptr;  ///< [K, d] the mean of y per problem (centred costs)
  void* cost = nullptr;      ///< [K, N, N] float, or double for an f64 cost matrix
  kernels::AuctionScratch scratch;
  kernels::AuctionOutputs out;
};

/// The sizes and memory of one staged batch.
struct Staging {
  std::int64_t K = 0, n = 0, m = 0, d = 0, N = 0;
  bool matrix = false;
  bool f64 = false;          ///< the cost is staged (and solved) in fp64
  bool direct_cost = false;  ///< the caller's square contiguous matrix is read in place
  bool direct_x = false, direct_y = false;
  /// Points are translated by the mean of y (in double, before rounding): sqeuclidean
  /// and euclidean costs are translation invariant, and the GEMM's norm form
  /// |x|^2 + |y|^2 - 2<x, y> cancels catastrophically on clouds far from the origin
  /// unless centred. neg_dot (-<x, y>) is not invariant: its points stay as given.
  bool centred = false;
};

template <class T>
bool contiguous_as(const TensorView& v) {
  return v.present() && (sizeof(T) == 8) == (v.dtype == DType::f64) && v.is_contiguous();
}

Staging describe(const AssignmentProblem& p, const detail::AssignmentShape& s) {
  Staging st;
  st.K = s.batch;
  st.n = s.n;
  st.m = s.m;
  st.d = s.d;
  st.N = std::max(s.n, s.m);
  st.matrix = p.cost_kind == CostKind::matrix;
  st.f64 = st.matrix && p.cost.dtype == DType::f64;
  st.direct_cost = st.matrix && s.n == s.m && p.cost.is_contiguous();
  st.centred = !st.matrix && p.cost_kind != CostKind::neg_dot;
  // Only uncentred fp32 points are read in place; centred ones are always staged.
  st.direct_x = !st.matrix && !st.centred && contiguous_as<float>(p.x);
  st.direct_y = !st.matrix && !st.centred && contiguous_as<float>(p.y);
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  if (st.N * st.N > kIntMax * std::int64_t{4} || st.K > kIntMax || st.d > kIntMax ||
      st.n * st.m > kIntMax) {
    throw InvalidArgument(fmt::format(
        "assignment: backend cuda handles n * m up to {} per problem (got n = {}, m = {}, "
        "d = {}); split the problem",
        kIntMax, s.n, s.m, s.d));
  }
  return st;
}

/// Carves the workspace (base null: counts). `raw_bytes`: host inputs staged raw;
/// `outputs`: the synchronous path's result arrays live in the workspace too.
Buffers carve(const Staging& st, std::size_t raw_bytes, bool outputs, char* base,
              std::size_t* total) {
  Carve c{0, base};
  Buffers bf;
  const std::int64_t K = st.K, n = st.n, m = st.m, d = st.d, N = st.N;
  bf.raw = c.take<unsigned char>(static_cast<std::int64_t>(raw_bytes));
  if (st.matrix) {
    const std::int64_t cells = st.direct_cost ? 0 : K * N * N;
    bf.cost = st.f64 ? static_cast<void*>(c.take<double>(cells))
                     : static_cast<void*>(c.take<float>(cells));
  } else {
    bf.x = c.take<float>(st.direct_x ? 0 : K * n * d);
    bf.y = c.take<float>(st.direct_y ? 0 : K * m * d);
    bf.center = c.take<double>(st.centred ? K * d : 0);
    bf.xn = c.take<float>(K * n);
    bf.yn = c.take<float>(K * m);
    bf.g = c.take<float>(K * n * m);
    bf.cost = c.take<float>(K * N * N);
  }
  auto& s = bf.scratch;
  s.price = c.take<double>(K * N);
  s.row_u = c.take<double>(K * N);
  s.row_col = c.take<int>(K * N);
  s.col_row = c.take<int>(K * N);
  s.bid_row = c.take<int>(K * N);
  s.my_col = c.take<int>(K * N);
  s.bid_val = c.take<unsigned long long>(K * N);
  s.my_bid = c.take<unsigned long long>(K * N);
  s.bid_row2 = c.take<int>(K * N);
  s.unassigned = c.take<int>(K * N);
  s.unassigned2 = c.take<int>(K * N);
  s.bid_val2 = c.take<unsigned long long>(K * N);
  s.grid_ctrl = c.take<unsigned char>(K * kernels::kAuctionGridCtrlBytes);
  if (outputs) {
    auto& o = bf.out;
    o.row_to_col = c.take<std::int64_t>(K * n);
    o.col_to_row = c.take<std::int64_t>(K * m);
    o.u = c.take<double>(K * n);
    o.v = c.take<double>(K * m);
    o.cost = c.take<double>(K);
    o.dual = c.take<double>(K);
    o.gap = c.take<double>(K);
    o.max_violation = c.take<double>(K);
    o.rounds = c.take<long long>(K);
    o.status = c.take<int>(K);
  }
  if (total) *total = c.offset;
  return bf;
}

/// OTGPU_AUCTION=block or =grid forces that path of the auction (tests cover the grid
/// path on small problems with it, and the bench can compare the two); unset or any
/// other value: the automatic rule of kernels::AuctionPath.
kernels::AuctionPath auction_path() {
  const char* e = std::getenv("OTGPU_AUCTION");
  if (e == nullptr) return kernels::AuctionPath::automatic;
  const std::string_view v(e);
  return v == "grid"    ? kernels::AuctionPath::grid
         : v == "block" ? kernels::AuctionPath::block
                        : kernels::AuctionPath::automatic;
}

/// Queues the staging of the costs and the auction. `src_cost`, `src_x`, `src_y` are
/// where the kernels read the inputs (caller device pointers or staged raw bytes).
void enqueue(runtime::Context& ctx, const AssignmentProblem& p, const Staging& st,
             const Buffers& bf, const void* src_cost, const void* src_x, const void* src_y) {
  const cudaStream_t stream = ctx.stream();
  const std::int64_t K = st.K, n = st.n, m = st.m, d = st.d, N = st.N;
  const void* cost = bf.cost;
  if (st.matrix) {
    TensorView cv = p.cost;
    if (cv.rank == 2) {  // [n, m] -> [1, n, m]
      cv.rank = 3;
      cv.shape = {1, p.cost.dim(0), p.cost.dim(1)};
      cv.strides = {0, p.cost.stride(0), p.cost.stride(1)};
    }
    if (st.direct_cost) {
      cost = src_cost;
    } else if (st.f64) {
      kernels::assignment_stage_matrix(strided3(cv, src_cost), N, static_cast<double*>(bf.cost),
                                       stream);
    } else {
      kernels::assignment_stage_matrix(strided3(cv, src_cost), N, static_cast<float*>(bf.cost),
                                       stream);
    }
  } else {
    const float* X = st.direct_x ? static_cast<const float*>(src_x) : bf.x;
    const float* Y = st.direct_y ? static_cast<const float*>(src_y) : bf.y;
    if (st.centred) {
      kernels::stage_centered_pair(strided3(p.x, src_x), strided3(p.y, src_y), K,
                                   static_cast<int>(d), bf.center, bf.x, bf.y, stream);
    } else {
      if (!st.direct_x) kernels::gather(strided3(p.x, src_x), bf.x, stream);
      if (!st.direct_y) kernels::gather(strided3(p.y, src_y), bf.y, stream);
    }
    kernels::assignment_row_norms(X, K * n, d, bf.xn, stream);
    kernels::assignment_row_norms(Y, K * m, d, bf.yn, stream);
    // Row-major G [n, m] = X Y^T is column-major G^T [m, n] = Y X^T: with X^T, Y^T the
    // column-major views (ld d) of the row-major points, C = op_T(Y^T) op_N(X^T).
    cublasHandle_t blas = ctx.blas();
    OTGPU_CUDA_CHECK(kernels::cublas().set_math_mode(blas, CUBLAS_DEFAULT_MATH));  // fp32, no TF32
    const float one = 1.0f, zero = 0.0f;
    OTGPU_CUDA_CHECK(kernels::cublas().sgemm_strided_batched(
        blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n),
        static_cast<int>(d), &one, Y, static_cast<int>(d), m * d, X, static_cast<int>(d), n * d,
        &zero, bf.g, static_cast<int>(m), n * m, static_cast<int>(K)));
    kernels::assignment_points_epilogue(bf.g, bf.xn, bf.yn, K, n, m, N, p.cost_kind,
                                        static_cast<float*>(bf.cost), stream);
  }
  const std::size_t smem = runtime::device_props(ctx.device()).smem_per_block_optin;
  const kernels::AuctionPath path = auction_path();
  if (st.f64) {
    kernels::assignment_auction(static_cast<const double*>(cost), K, n, m, N, bf.scratch, bf.out,
                                smem, path, stream);
  } else {
    kernels::assignment_auction(static_cast<const float*>(cost), K, n, m, N, bf.scratch, bf.out,
                                smem, path, stream);
  }
}

std::size_t need_bytes(runtime::Context& ctx, const Staging& st, std::size_t raw, bool outputs) {
  std::size_t need = 0;
  carve(st, raw, outputs, nullptr, &need);
  std::size_t free_bytes = 0, total_bytes = 0;
  OTGPU_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  free_bytes += ctx.workspace_bytes();
  if (need > free_bytes) {
    throw OutOfMemory(
        fmt::format("assignment: needs {:.1f} MiB of device memory on device {}, {:.1f} MiB free",
                    static_cast<double>(need) / 1048576.0, ctx.device(),
                    static_cast<double>(free_bytes) / 1048576.0));
  }
  return need;
}

template <class T>
void read_vec(std::vector<T>& dst, const T* src, std::int64_t count, cudaStream_t stream) {
  dst.resize(static_cast<std::size_t>(count));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, static_cast<std::size_t>(count) * sizeof(T),
                                   cudaMemcpyDeviceToHost, stream));
}

}  // namespace

AssignmentResult assignment(GpuContext* gpu_ctx, const AssignmentProblem& problem,
                            const AssignmentOptions& options,
                            const detail::AssignmentShape& shape) {
  const DeviceRestore restore;
  runtime::Context& ctx = runtime::context_or_thread(gpu_ctx, options.device);
  ctx.activate();
  const cudaStream_t stream = ctx.stream();
  const Staging st = describe(problem, shape);
  const bool host_inputs = shape.space == MemorySpace::host;
  const std::vector<const TensorView*> inputs{&problem.cost, &problem.x, &problem.y};
  RawLayout up;
  for (const TensorView* v : inputs) up.add(host_inputs ? *v : TensorView{});
  const std::size_t need = need_bytes(ctx, st, up.bytes, true);
  const Buffers bf = carve(st, up.bytes, true, static_cast<char*>(ctx.workspace(need)), nullptr);
  if (host_inputs && up.bytes > 0) {
    unsigned char* pin = stage_raw(ctx, inputs, up);
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(bf.raw, pin, up.bytes, cudaMemcpyHostToDevice, stream));
    ctx.staging_done();
  }
  auto source = [&](std::size_t k) -> const void* {
    return host_inputs ? static_cast<const void*>(bf.raw + up.offset[k]) : inputs[k]->data;
  };
  enqueue(ctx, problem, st, bf, source(0), source(1), source(2));

  const std::int64_t K = st.K, n = st.n, m = st.m, N = st.N;
  AssignmentResult r;
  r.backend = Backend::cuda;
  r.device = ctx.device();
  r.batch = K;
  r.n = n;
  r.m = m;
  std::vector<double> cost, dual, gap, viol;
  std::vector<long long> rounds;
  std::vector<int> status;
  read_vec(r.row_to_col, bf.out.row_to_col, K * n, stream);
  read_vec(r.col_to_row, bf.out.col_to_row, K * m, stream);
  read_vec(r.u, bf.out.u, K * n, stream);
  read_vec(r.v, bf.out.v, K * m, stream);
  read_vec(cost, bf.out.cost, K, stream);
  read_vec(dual, bf.out.dual, K, stream);
  read_vec(gap, bf.out.gap, K, stream);
  read_vec(viol, bf.out.max_violation, K, stream);
  read_vec(rounds, bf.out.rounds, K, stream);
  read_vec(status, bf.out.status, K, stream);
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream));
  r.problems.resize(static_cast<std::size_t>(K));
  for (std::int64_t b = 0; b < K; ++b) {
    const auto k = static_cast<std::size_t>(b);
    auto& rep = r.problems[k];
    rep.cost = cost[k];
    rep.dual = dual[k];
    rep.gap = gap[k];
    rep.max_violation = viol[k];
    rep.iterations = rounds[k];
    if (status[k] == 0) continue;
    // The auction stopped (a row or column with no allowed pair, or the round cap):
    // the exact answer, or the Infeasible error, from the CPU on the staged costs.
    const std::int64_t cells = N * N;
    std::vector<double> full(static_cast<std::size_t>(cells));
    if (st.f64) {
      const double* src = (st.direct_cost ? static_cast<const double*>(source(0))
                                          : static_cast<const double*>(bf.cost)) +
                          b * cells;
      OTGPU_CUDA_CHECK(
          cudaMemcpy(full.data(), src, full.size() * sizeof(double), cudaMemcpyDeviceToHost));
    } else {
      std::vector<float> f(static_cast<std::size_t>(cells));
      const float* src = (st.direct_cost ? static_cast<const float*>(source(0))
                                         : static_cast<const float*>(bf.cost)) +
                         b * cells;
      OTGPU_CUDA_CHECK(cudaMemcpy(f.data(), src, f.size() * sizeof(float), cudaMemcpyDeviceToHost));
      std::copy(f.begin(), f.end(), full.begin());
    }
    std::vector<double> c(static_cast<std::size_t>(n * m));
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < m; ++j) {
        c[static_cast<std::size_t>(i * m + j)] = full[static_cast<std::size_t>(i * N + j)];
      }
    }
    std::string why;
    if (!cpu::solve_problem(c.data(), n, m, r.row_to_col.data() + b * n,
                            r.col_to_row.data() + b * m, r.u.data() + b * n, r.v.data() + b * m,
                            rep, why)) {
      cpu::throw_infeasible(b, why);
    }
  }
  return r;
}

void assignment_async(GpuContext& gpu_ctx, const AssignmentProblem& problem,
                      const AssignmentOptions&, const detail::AssignmentShape& shape,
                      const DeviceAssignmentOutputs& outputs) {
  const DeviceRestore restore;
  runtime::Context& ctx = gpu_ctx.impl();
  ctx.activate();
  const Staging st = describe(problem, shape);
  const std::size_t need = need_bytes(ctx, st, 0, false);
  Buffers bf = carve(st, 0, false, static_cast<char*>(ctx.workspace(need)), nullptr);
  bf.out.row_to_col = outputs.row_to_col;
  bf.out.col_to_row = outputs.col_to_row;
  bf.out.cost = outputs.cost;
  bf.out.gap = outputs.gap;
  enqueue(ctx, problem, st, bf, problem.cost.data, problem.x.data, problem.y.data);
}

}  // namespace otgpu::cuda_backend
