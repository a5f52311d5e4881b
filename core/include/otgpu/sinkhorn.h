// Entropic optimal transport by log-domain Sinkhorn, batched, on the CPU or GPU.
//
// Conventions (one everywhere, see docs/design.md):
//   mu = sum_i a_i delta_{x_i}, nu = sum_j b_j delta_{y_j}, C_ij = c(x_i, y_j)
//   P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)
//   f_i <- -lambda_a eps LSE_j(log b_j + (g_j - C_ij)/eps),  lambda_a = rho_a/(rho_a+eps)
//   g_j <- -lambda_b eps LSE_i(log a_i + (f_i - C_ij)/eps),  lambda_b = rho_b/(rho_b+eps)
//   (rho = +infinity, the default, is the balanced problem: lambda = 1)
// One iteration is an f-update followed by a g-update, so after an iteration the
// column marginal P^T 1 = b is exact (balanced) and the row marginal is measured.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "otgpu/types.h"

namespace otgpu {

enum class CostKind : std::uint8_t {
  sqeuclidean,  ///< |x - y|^2 (default)
  euclidean,    ///< |x - y|
  matrix,       ///< a user-given dense [B, n, m] cost matrix
  neg_dot,      ///< -<x, y> (exact assignment only; Sinkhorn rejects it)
};
CostKind parse_cost_kind(std::string_view text, std::string_view arg_name = "cost");
std::string_view to_string(CostKind c) noexcept;

/// A batch of B independent problems. Either point clouds x [B,n,d] / y [B,m,d]
/// (rank 2 [n,d] means B = 1) with cost_kind sqeuclidean/euclidean, or a cost
/// matrix [B,n,m] (rank 2 [n,m] means B = 1) with cost_kind = matrix.
/// Weights a [n] or [B,n], b [m] or [B,m]; a rank-1 weight vector is shared by all
/// problems; absent weights are uniform (1/n, 1/m). Weights must be finite,
/// non-negative, with positive mass; balanced problems need equal masses (relative
/// 1e-5) and b is rescaled to the mass of a. Views may be host or device memory
/// (device memory only with the CUDA backend).
struct SinkhornProblem {
  TensorView x;
  TensorView y;
  TensorView cost;
  TensorView a;
  TensorView b;
  CostKind cost_kind = CostKind::sqeuclidean;
};

/// Marks an option that the library resolves from the backend that runs (see
/// SinkhornOptions::tol and eps_init). Only this exact value means "auto".
inline constexpr double kAuto = -1.0;

/// How the solver iterates toward the fixed point. Every choice has the same fixed point
/// (the entropic solution at eps); they differ in how fast it is reached. The CPU and
/// the CUDA synchronous driver run both (on the GPU the rule runs per problem on the
/// device, from the residuals of its checks; sinkhorn_async runs plain updates).
enum class SinkhornAcceleration : std::uint8_t {
  /// Plain alternating log-domain updates f <- T_f(g), g <- T_g(f).
  none,
  /// Adaptive over-relaxation f <- (1 - w) f + w T_f(g) (same for g), w in [1, 2).
  /// The first checks run plain Sinkhorn and measure its linear rate r per iteration;
  /// then w = 2 / (1 + sqrt(1 - r)) (the optimal relaxation of the linearized
  /// iteration, Thibault et al. 2021, Lehmann et al. 2022), raised as later checks
  /// measure a slower rate. Needs check_every > 0. Safeguard: a check whose
  /// residual is not below the previous check's restores the potentials of that check
  /// and halves w - 1; after three such failures the problem runs plain Sinkhorn. The
  /// g-update of a check iteration and of the last iteration is plain (w = 1), so the
  /// column marginal stays exact and the reported errors are those of the plan.
  overrelax,
};

/// Arithmetic of the cost recomputation -2<x_i, y_j> on the CUDA backend's online
/// kernel (point clouds, d >= 16; the CPU reference is fp64 whatever is asked, the
/// small and dense kernels and d < 16 are fp32). See docs/design.md, "Precision".
enum class Precision : std::uint8_t {
  /// fp32-level accuracy (default). On tensor cores as 3xTF32: each operand is split
  /// x = x_big + x_small into two TF32 numbers and the products big*big + big*small +
  /// small*big are accumulated in fp32 (the small*small term is below 2^-22 |x||y|).
  fp32,
  /// Opt-in: one TF32 product (10-bit mantissa operands, fp32 accumulate). The dot
  /// product carries a relative error of about 2^-11, i.e. |dC| ~ 1e-3 (|x|^2 + |y|^2)
  /// of the centred points: use it only when eps is well above that.
  tf32,
  /// Opt-in: one bf16 product (7-bit mantissa, fp32 accumulate): |dC| ~ 1e-2 (|x|^2 +
  /// |y|^2) of the centred points.
  bf16,
  /// Reported only (SinkhornResult::precision of the CPU reference); not an option.
  fp64,
};
Precision parse_precision(std::string_view text, std::string_view arg_name = "precision");
std::string_view to_string(Precision p) noexcept;

/// One convergence check, given to SinkhornOptions::progress.
struct SinkhornProgress {
  /// Problem the check belongs to, or -1 when it covers the whole batch (the CUDA
  /// backend checks all problems at once; the CPU solves problems one by one or one
  /// per thread and reports each problem's checks).
  std::int64_t problem = -1;
  int iteration = 0;        ///< iterations done by that problem (or batch); never decreases
  double eps = 0;           ///< absolute eps_t of the last iteration
  double residual = 0;      ///< the quantity compared with tol (max over the batch when -1)
  double elapsed_s = 0;     ///< seconds since the solve started
  std::int64_t active = 0;  ///< problems of the batch not finished yet
};

struct SinkhornOptions {
  /// Entropic regularization, in cost units (or times mean(C) when eps_relative).
  /// Working range (fp64 CPU): eps >= 3.3e-13 x max|C_ij| of the problem; below it
  /// (f_i + g_j - C_ij) / eps cannot be resolved and the call throws InvalidArgument
  /// naming the range; likewise above 5.6e14 x (max C - min C), where the costs vanish
  /// below the rounding of the updates. Up to there OT_eps is computed without
  /// cancellation (it tends to <a (x) b, C> as eps grows).
  double eps = 0.01;
  /// eps (and eps_init) are multiplied by the mean of C_ij over i, j, per problem
  /// (as OTT-JAX does); the eps actually used is reported per problem.
  bool eps_relative = false;
  /// Iteration cap; hitting it is reported (converged = false), never thrown.
  int max_iter = 100000;
  /// Convergence when the L1 row-marginal error ||P 1 - a||_1 <= tol (balanced) or
  /// when the fixed-point residual sum_i a_i |exp((f_i - f_i^new)/eps) - 1| <= tol
  /// (unbalanced, where the marginals are not matched exactly). kAuto (the default)
  /// resolves to the precision that runs: 1e-6 on the fp64 CPU, 1e-4 on the fp32 CUDA
  /// backend (its residual has a floor of roughly 1e-5 from the fp32 round-off of
  /// f/eps). The tol used is reported in SinkhornResult::tol. Otherwise finite >= 0.
  double tol = kAuto;
  /// Convergence is measured every check_every iterations (it is free: the check
  /// reuses the next f-update). 0 disables checks: exactly max_iter iterations run.
  int check_every = 10;
  /// Epsilon scaling. An explicit eps_init > eps runs eps_t = max(eps, eps_init *
  /// eps_decay^t), one iteration per level (both backends). kAuto (the default) runs,
  /// on the CPU, a continuation from 1024 x eps: eps_t is multiplied by eps_decay
  /// each time the problem at eps_t is solved loosely (L1 residual <= 1e-2, or 50
  /// iterations), and only when eps < 3e-3 x (max C - min C), never starting above
  /// 2 x (max C - min C). At larger eps scaling moves the start without saving
  /// iterations, and the one-iteration-per-level schedule cost many more on some
  /// problems (self-transport, small weighted clouds): see otgpu/detail/accel.h for
  /// the rule and its data. The CUDA synchronous driver runs the same continuation
  /// (otgpu/detail/eps_continuation.h): each problem's start from the spread of its
  /// fp32 costs (one device pass over the n x m pairs), its level moved on the device
  /// after every iteration from the residual at eps_t, in a first phase of at most
  /// 50 x (levels + 1) iterations, plain launches; so the CUDA backend's per-problem
  /// iterations include the levels', as on the CPU (the one-kernel path for n, m <=
  /// 512 is then not used). sinkhorn_async reads kAuto as no scaling. 0 turns
  /// scaling off. Convergence is only declared at eps.
  double eps_init = kAuto;
  double eps_decay = 0.5;
  /// KL marginal penalties; +infinity (default) = hard marginal constraint.
  double rho_a = std::numeric_limits<double>::infinity();
  double rho_b = std::numeric_limits<double>::infinity();
  /// Warm start: when non-empty, initial potentials f [B*n] and g [B*m].
  std::vector<double> f_init;
  std::vector<double> g_init;
  /// The iteration (CPU and CUDA synchronous driver; sinkhorn_async runs plain
  /// updates, and so does the CUDA small-problem kernel, n, m <= 512, which keeps a
  /// batch that fits it unless the eps continuation scales one of its problems);
  /// each problem reports what ran.
  SinkhornAcceleration acceleration = SinkhornAcceleration::overrelax;
  /// Called at each convergence check (from one thread at a time, possibly not the
  /// caller's). Returning false cancels the solve: every problem stops at its next
  /// check and reports converged = false with the potentials it has. The CUDA backend
  /// calls it at its lagged host reads of the device residuals (problem = -1): the
  /// synchronous calls on the online/dense kernels, one call per check, one check
  /// period late (residual: the largest of the batch at that check; active: the
  /// problems not retired by it); returning false stops enqueueing after the check
  /// period already queued, so unfinished problems report one period more than the
  /// iteration reported. The small kernel (whole loop on the device, n, m <= 512)
  /// and sinkhorn_async never read the device from the host and never call it.
  std::function<bool(const SinkhornProgress&)> progress;
  Backend backend = Backend::automatic;
  int device = 0;  ///< CUDA device ordinal
  /// CPU worker threads; 0 = automatic: one thread for a problem too small to repay
  /// a parallel region, else the hardware threads not running other tasks at the
  /// call (Linux: runnable tasks in /proc/loadavg), so that a loaded machine does not
  /// pay for spin-waiting barriers. Results are bitwise identical for every count.
  int cpu_threads = 0;
  /// Arithmetic of the CUDA online kernel's cost tile (fp32, tf32 or bf16; the CPU
  /// ignores it). SinkhornResult::precision and tensor_cores report what ran.
  Precision precision = Precision::fp32;
  /// CUDA devices of a sharded solve in this process (empty: one device, `device`).
  /// With two or more entries the rows of x (or of the cost matrix) and of a are split
  /// over them in contiguous slices (otgpu/dist.h's layout), one shard and one thread
  /// per entry; a repeated ordinal puts several logical shards on one device. The
  /// shards merge over NCCL when the ordinals are distinct and NCCL is built, else
  /// through pinned host memory. The result is the whole problem's (f in row order).
  /// One entry is the plain solve on that device. Needs the cuda backend (or
  /// automatic), host tensors and n >= the number of entries.
  std::vector<int> devices;
};

/// Per-problem outcome.
struct SinkhornReport {
  double eps = 0;             ///< absolute eps used (after eps_relative)
  double ot_eps = 0;          ///< entropic value: dual objective at (f, g) (== primal at optimum)
  double transport_cost = 0;  ///< <P, C>
  double marginal_error = 0;  ///< ||P 1 - a||_1 at the returned potentials
  double residual = 0;        ///< the quantity compared with tol (== marginal_error if balanced)
  int iterations = 0;
  bool converged = false;
  /// What ran: overrelax when any iteration used w > 1 (omega is the last w), none
  /// when the problem ran plain updates only (asked for, or the safeguard fell back).
  SinkhornAcceleration acceleration = SinkhornAcceleration::none;
  double omega = 1.0;
};

struct SinkhornResult {
  Backend backend = Backend::cpu;  ///< the backend that actually ran
  int device = -1;                 ///< CUDA device ordinal when backend == cuda
  std::int64_t batch = 0, n = 0, m = 0, d = 0;
  std::vector<double> f;  ///< [B, n] row-major
  std::vector<double> g;  ///< [B, m]
  std::vector<SinkhornReport> problems;
  double tol = 0;  ///< the tolerance that was used (kAuto resolved)
  double time_ms = 0;
  bool cancelled = false;  ///< the progress callback returned false
  /// What computed the costs: fp64 (CPU reference), fp32 (the SIMT kernels, or 3xTF32
  /// on tensor cores), tf32 or bf16 (tensor cores, asked for by options.precision).
  Precision precision = Precision::fp64;
  bool tensor_cores = false;  ///< the online half-steps ran on tensor cores (mma.sync)
  /// Opaque state the solve keeps for the derived outputs of the same problem (CUDA
  /// backend: the staged fp32 problem, the potentials and eps in a device allocation
  /// of its own, about 4 (B n d' + B m d') + 12 (B n + B m) bytes, d' = d padded, or
  /// 4 B n m for a cost matrix; freed when the last copy of the result dies). The
  /// derived outputs use it when they are given the same problem (same data pointers,
  /// shapes and strides; the data must not have changed) and then read the potentials
  /// from it, not from f and g. Reset it to release the memory early; without it the
  /// derived outputs stage the problem again. Null on the CPU backend.
  std::shared_ptr<const void> state;
};

/// Solves the batch. Throws InvalidArgument/ShapeError/DTypeError/NonFiniteInput on
/// bad input and DeviceUnavailable when `backend = cuda` cannot run. Backend::automatic
/// uses CUDA when a device is present (and the build has CUDA), else the CPU.
SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options = {});

// ---- Derived outputs, from the potentials of `result` (P is never formed) ----
// They run on result.backend. Point-cloud problems only where y is needed.

/// Barycentric map T(x_i) = sum_j P_ij y_j / sum_j P_ij, [B, n, d] row-major.
std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result);

/// Gradient of OT_eps w.r.t. x_i: sum_j P_ij grad_x c(x_i, y_j), [B, n, d]. For the
/// squared Euclidean cost, 2 (r_i x_i - sum_j P_ij y_j) with r_i = sum_j P_ij.
std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result);

/// One partner j per row i drawn from P_i. / sum_j P_ij by Gumbel-max over
/// log b_j + (g_j - C_ij)/eps with Philox keyed by (seed, problem, i, j): the same
/// seed gives the same partners whatever the tiling, thread count or backend
/// (up to floating-point near-ties). [B, n].
std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result, std::uint64_t seed);

/// Debiased Sinkhorn divergence S_eps = OT_eps(a,b) - OT_eps(a,a)/2 - OT_eps(b,b)/2
/// per problem (point clouds only). With eps_relative, eps is fixed from the mean
/// cost of the (a, b) problem and the same absolute eps is used for all three terms.
/// Unbalanced (KL penalties; needs rho_a = rho_b = rho, else InvalidArgument), after
/// Sejourne et al. 2019, "Sinkhorn divergences for unbalanced optimal transport":
///   S_eps = OT_eps(a,b) - OT_eps(a,a)/2 - OT_eps(b,b)/2 + eps/2 (m(a) - m(b))^2,
/// m = total mass. Here OT_eps(a,b) = min_P <P,C> + eps KL(P | a x b) + rho KL(P 1 | a)
/// + rho KL(P^T 1 | b), with KL(p | q) = sum p log(p/q) - p + q, so each term holds the
/// constant eps m(a) m(b) (the value at (f, g) = 0 of the dual in SinkhornReport::
/// ot_eps); the three leave -eps/2 (m(a) - m(b))^2, which the mass term cancels. Then
/// S_eps >= 0 and S_eps(a, a) = 0. Balanced problems have m(a) = m(b): no term.
/// The self terms run (on the backend of the (x, y) solve; the CUDA one never calls
/// options.progress for them) the symmetric update f <- (f + T(f)) / 2 with
/// T(f)_i = -lambda eps LSE_j(log a_j + (f_j - C_ij) / eps) (lambda = rho/(rho+eps),
/// 1 when balanced), whose fixed point is the self potential (balanced: OT_eps(a, a) =
/// 2 <a, f>) and which needs a few dozen iterations where
/// alternating updates need thousands.
std::vector<double> sinkhorn_divergence(const SinkhornProblem& problem,
                                        const SinkhornOptions& options = {});

/// True when the library was built with CUDA and at least one device is usable.
bool cuda_available() noexcept;
/// Number of usable CUDA devices (0 without CUDA in the build, a driver or a device).
int cuda_device_count() noexcept;

/// The debiased divergence from an existing (x, y) solve `xy` of `problem` with
/// `options`: only the two self terms OT_eps(a,a) and OT_eps(b,b) are solved (2 B
/// solves), with the absolute eps xy reports per problem. Throws ShapeError when xy
/// does not belong to the problem. The overload above solves (x, y) once, then calls
/// this one.
std::vector<double> sinkhorn_divergence(const SinkhornProblem& problem, const SinkhornResult& xy,
                                        const SinkhornOptions& options = {});

// Stream semantics of the synchronous calls on the CUDA backend: their work is queued
// on the legacy default stream of the device (the GpuContext overloads in
// otgpu/device.h: on the context's stream), after whatever the caller queued there
// before (inputs in device memory may be written by the caller's kernels right before
// the call), and they return once it has completed.

namespace detail {
/// Number of Sinkhorn solves run in this process so far (every otgpu::sinkhorn call
/// that reached a backend, the ones sinkhorn_divergence makes included), for tests.
std::int64_t solve_count() noexcept;
}  // namespace detail

}  // namespace otgpu
