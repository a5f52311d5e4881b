// Minibatch couplings for flow matching: pair a minibatch of noise x0 [bs0, d] with a
// minibatch of data x1 [bs1, d] by an optimal transport plan, K minibatches at once.
//
// Every minibatch k carries uniform weights 1/bs0 and 1/bs1 and the cost
// C_ij = c(x0_i, x1_j) (squared Euclidean by default). The methods:
//   exact      the optimal permutation (bs0 == bs1), by otgpu::assignment: the pairs
//              are (i, s(i)) for i = 0..bs-1;
//   sinkhorn   the entropic plan P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps) of
//              otgpu::sinkhorn (eps relative to the mean cost by default);
//   unbalanced the same with KL marginal penalties rho (rho_a = rho_b = rho).
// The entropic plan is never formed. Pairs are drawn from it in one of two ways:
//   per_row  one partner per row: j_i ~ P_i. / r_i by Gumbel-max (sample_partners),
//            pairs (i, j_i) for i = 0..bs0-1;
//   joint    num_pairs pairs from P / sum(P):
//            with replacement: draw t takes i_t from the row marginal r / sum(r) by
//              inverse CDF of a uniform keyed (seed, k, t), then j_t from P_{i_t .}
//              by Gumbel-max over log b_j + (g_j - C_{i_t j})/eps + G(seed', k, t, j);
//            without replacement: the num_pairs largest of the perturbed log-plan
//              log P_ij + G(seed'', k, i, j) over all bs0 * bs1 entries (Gumbel-top-k,
//              Vieira 2014 / Kool et al. 2019: a sample without replacement from P),
//              returned in increasing (i, j) order. The GPU finds the threshold of
//              the top num_pairs by a radix select over the keys, recomputed from C
//              in each pass; the CPU keeps a heap of the num_pairs best.
// Keys: counter-based Philox4x32-10 (otgpu/detail/coupling_math.h), so the same seed
// gives the same pairs whatever the thread count, tiling or backend, up to
// floating-point near-ties between the fp64 CPU and the fp32 GPU.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "otgpu/types.h"

namespace otgpu {

class GpuContext;

enum class CouplingMethod : std::uint8_t { exact, sinkhorn, unbalanced };
/// Parses "exact" | "sinkhorn" | "unbalanced"; throws InvalidArgument naming arg_name.
CouplingMethod parse_coupling_method(std::string_view text, std::string_view arg_name = "method");
std::string_view to_string(CouplingMethod m) noexcept;

/// How pairs are read from an entropic plan (see the file comment).
enum class CouplingPairs : std::uint8_t { per_row, joint };

struct CouplingOptions {
  CouplingMethod method = CouplingMethod::sinkhorn;
  CostKind cost_kind = CostKind::sqeuclidean;  ///< sqeuclidean or euclidean
  /// Entropic regularization; times the mean cost of each minibatch when eps_relative.
  double eps = 0.05;
  bool eps_relative = true;
  /// KL marginal penalty of the unbalanced method, in cost units (finite, > 0).
  double rho = 1.0;
  CouplingPairs pairs = CouplingPairs::joint;
  /// Pairs per minibatch for joint sampling; 0 = bs0. Exact: 0 or bs (the permutation).
  std::int64_t num_pairs = 0;
  /// Joint sampling with replacement (as torchcfm's np.random.choice over the plan
  /// does); the default draws distinct pairs.
  bool replacement = false;
  std::uint64_t seed = 0;
  /// Passed to the Sinkhorn solve (tol kAuto, max_iter, ...); eps, eps_relative,
  /// rho, backend and device of this struct take precedence.
  SinkhornOptions sinkhorn{};
  Backend backend = Backend::automatic;
  int device = 0;
};

/// Per-minibatch outcome.
struct CouplingReport {
  double pair_cost = 0;  ///< mean of C over the returned pairs
  double ot = 0;         ///< OT_eps of the minibatch (entropic) or the exact cost / bs (exact)
  double eps = 0;        ///< absolute eps used (entropic), 0 for exact
  double gap = 0;        ///< exact: the certified optimality gap; entropic: the residual
  int iterations = 0;
  bool converged = false;  ///< entropic: the Sinkhorn solve converged; exact: gap certified
};

struct CouplingResult {
  Backend backend = Backend::cpu;  ///< the backend that ran
  std::int64_t batch = 0;          ///< K
  std::int64_t pairs = 0;          ///< pairs per minibatch
  std::vector<std::int64_t> i;     ///< [K, pairs]: rows of x0
  std::vector<std::int64_t> j;     ///< [K, pairs]: rows of x1
  std::vector<CouplingReport> problems;
  double time_ms = 0;
};

/// Couples x0 [K, bs0, d] with x1 [K, bs1, d] (rank 2 means K = 1), host or device
/// views (device only with the CUDA backend), f32 or f64, any strides. Throws
/// ShapeError (mismatched K or d, bs0 != bs1 for exact, empty batch), NonFiniteInput
/// (NaN or infinity in x0 or x1), InvalidArgument (options: eps, rho, num_pairs larger
/// than bs0 * bs1 without replacement), DeviceUnavailable.
CouplingResult couple(const TensorView& x0, const TensorView& x1,
                      const CouplingOptions& options = {});

/// The same on ctx's device and stream (synchronous; options.backend is ignored).
CouplingResult couple(GpuContext& ctx, const TensorView& x0, const TensorView& x1,
                      const CouplingOptions& options = {});

/// Number of pairs per minibatch couple() returns for these sizes and options.
std::int64_t coupling_pairs(std::int64_t bs0, std::int64_t bs1, const CouplingOptions& options);

/// Enqueues the coupling on ctx's stream and returns at once: x0 and x1 in device
/// memory; i_out and j_out caller-owned device buffers of K * coupling_pairs(...)
/// int64 each. Shapes and options are validated on the host; the data is not read
/// back (NaN inputs give undefined pairs, never an exception). No host
/// synchronization; no allocation once the context's workspace has grown to the size
/// (the first call of a size; see coupling_async_workspace_bytes).
void couple_async(GpuContext& ctx, const TensorView& x0, const TensorView& x1,
                  const CouplingOptions& options, std::int64_t* i_out, std::int64_t* j_out);

/// Workspace bytes couple_async needs (for GpuContext::reserve).
std::size_t coupling_async_workspace_bytes(const TensorView& x0, const TensorView& x1,
                                           const CouplingOptions& options);

}  // namespace otgpu
