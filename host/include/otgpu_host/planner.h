// The Sinkhorn planner: ONE function from the problem (shape, cost, dtype, options) and
// the machine (a plain struct of device properties, or the CPU's) to everything a solve
// decides before it runs: the kernel, the padded dimension, rows per block and column
// tiles, the column splits of the f- and g-half-steps, the workspace and its carve-up,
// the batch chunks, the loop strategy and a roofline estimate of one iteration.
//
// Pure C++ (no CUDA header, no device query): the CUDA driver measures the device
// (host/src/cuda/sinkhorn_plan.cpp: attributes, free memory, the occupancy of the real
// kernels) and passes it in; `otgpu plan` passes the assumed H200 figures when no device
// is present; the tests pass made-up machines. The multi-GPU planner extends this one
// (rows sharded across devices): `device_count` is that extension point and is 1 now.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "otgpu/types.h"

namespace otgpu::planner {

enum class Kernel : std::uint8_t {
  cpu_reference,  ///< the fp64 CPU reference solver
  small,          ///< one block per problem runs the whole loop in shared memory
  dense,          ///< a cost matrix in device memory, read per half-step
  online,         ///< point clouds, C recomputed on the fly (flash-attention shape)
};
std::string_view to_string(Kernel k) noexcept;

/// Blocks per SM the online half-step kernel reaches for one padded dimension, as
/// measured by cudaOccupancyMaxActiveBlocksPerMultiprocessor on the compiled kernel.
struct Occupancy {
  int dp = 0;
  int blocks_per_sm = 0;
};

/// One device, as the planner needs it.
struct DeviceProps {
  std::string name;
  bool assumed = false;  ///< figures are published ones (no device was queried)
  int sm_count = 0;
  int max_threads_per_sm = 0;
  std::size_t smem_per_block_optin = 0;  ///< dynamic shared memory a block may opt into
  std::size_t smem_per_sm = 0;
  std::size_t memory_free = 0;  ///< bytes; 0 = unknown (no memory check)
  std::size_t memory_total = 0;
  std::int64_t max_batch_per_launch = 65535;  ///< grid y limit of the batched launches
  /// Measured occupancy of the online half-step per padded dimension. A dp missing
  /// here is estimated from threads and shared memory alone (and flagged assumed).
  std::vector<Occupancy> online_occupancy;
  /// Measured occupancy of the tensor-core half-step (3xTF32) per padded dimension.
  std::vector<Occupancy> mma_occupancy;
  double exp_per_s = 0;    ///< fp32 exp2 (MUFU) throughput, whole device
  double fp32_per_s = 0;   ///< fp32 FMA instructions per second, whole device
  double bytes_per_s = 0;  ///< device-memory bandwidth
  /// Dense tensor-core FLOP/s (2 per multiply-add) with TF32 and bf16 operands, fp32
  /// accumulate: 2048 and 4096 FLOP per clock per Hopper SM.
  double tf32_flops_per_s = 0;
  double bf16_flops_per_s = 0;
  int device_count = 1;            ///< devices the plan spans; 1 (sharding by rows comes later)
  bool conditional_nodes = false;  ///< driver and toolkit support conditional WHILE nodes
};

/// NVIDIA H200 SXM (141 GB) from its published figures: 132 SMs at 1.98 GHz boost,
/// 16 MUFU exp2 and 128 fp32 FMA per clock per SM, 4.8 TB/s HBM3e, 227 KB of shared
/// memory per block (228 KB per SM), 2,048 threads per SM. assumed = true.
DeviceProps h200_assumed();

/// The properties of CUDA device `device`, measured: attributes, free memory, the
/// occupancy of the online half-step kernels for every padded dimension, whether the
/// driver runs conditional graph nodes; rates from the SM count and clocks at the
/// per-SM figures of h200_assumed(). Throws DeviceUnavailable in builds without CUDA
/// or when the device is not usable. Defined by the CUDA backend
/// (host/src/cuda/sinkhorn_plan.cpp).
DeviceProps query_device(int device);

/// The CPU the reference solver runs on.
struct CpuProps {
  std::string name;
  int threads = 1;               ///< worker threads of the fp64 reference
  double exp_per_s = 0;          ///< fp64 exp throughput, all threads
  double bytes_per_s = 0;        ///< memory bandwidth
  std::size_t memory_total = 0;  ///< bytes; 0 = unknown
  bool assumed = true;
};

/// A plain CPU description: `threads` threads at an assumed 1e8 fp64 exp per second per
/// thread and 20 GB/s of memory bandwidth.
CpuProps cpu_assumed(int threads);

/// What is to be solved.
struct Request {
  std::int64_t B = 1, n = 0, m = 0, d = 0;  ///< d is ignored for cost matrices
  CostKind cost = CostKind::sqeuclidean;
  DType dtype = DType::f32;  ///< dtype of the inputs (the GPU computes in fp32)
  int max_iter = 1000;
  int check_every = 10;
  int scaling_steps = 0;   ///< K: iterations before the eps schedule reaches its target
  bool stage_cost = true;  ///< dense: the cost matrix is copied into the workspace
  Precision precision = Precision::fp32;  ///< SinkhornOptions::precision
};

/// Request from a problem's shape and options (K from the one eps-schedule rule).
Request make_request(std::int64_t B, std::int64_t n, std::int64_t m, std::int64_t d, CostKind cost,
                     DType dtype, const SinkhornOptions& options);

/// One half-step launch: `rows` potentials, each an LSE over `cols` columns.
struct HalfStep {
  std::int64_t rows = 0, cols = 0;
  std::int64_t rows_per_block = 0;
  std::int64_t row_blocks = 0;  ///< per problem
  std::int64_t col_tiles = 0;
  int splits = 1;             ///< column splits (flash-decoding), 1 = none
  std::int64_t blocks = 0;    ///< row_blocks * splits * batch (of the largest chunk)
  std::int64_t wave = 0;      ///< blocks the device holds at once (sm_count * occupancy)
  std::int64_t waves = 0;     ///< ceil(blocks / wave)
  double last_wave_fill = 0;  ///< blocks in the last wave / wave, in (0, 1]
};

/// A byte range of the workspace; bytes == 0: the array is absent (nullptr).
struct Span {
  std::size_t offset = 0, bytes = 0;
};

/// The carve-up of one device workspace (every array 256-byte aligned), in the order
/// the driver takes them. Counts are elements of the stated type.
struct WorkspaceLayout {
  Span X, Y, C;                         ///< float points [B,n,dp], [B,m,dp] or costs [B,n,m]
  Span logA, logB;                      ///< float [B,n], [B,m]
  Span a, b;                            ///< double [B,n], [B,m]
  Span Ft;                              ///< float [B,n] f-update of the checks
  Span eps_tab, lam_a_tab, lam_b_tab;   ///< float [K+1, B]
  Span small_eps, small_eps_init;       ///< float [B]
  Span active, iters, count;            ///< int [B], [B], [1]
  Span res;                             ///< double [B]
  Span small_res;                       ///< float [B]
  Span small_conv;                      ///< int [B]
  Span col_ws;                          ///< bytes of the dense column partials
  Span cmean, lse, row_mass, row_cost;  ///< float [B,n]
  Span out4;                            ///< double [B,4]
  Span partials;                        ///< float split partials of the online half-steps
  Span loop_state;                      ///< int [4] device-side loop counters
  Span F, G;                            ///< float [B,n], [B,m] when the workspace owns them
  Span center;                          ///< double [B, max(dp,1)]
  Span mean;                            ///< double [B]
  Span bad;                             ///< unsigned long long [4]
  Span mass;                            ///< double [2B]
  Span T;                               ///< float [B,n,max(dp,1)] (derived outputs)
  Span ratio;                           ///< double [B] (derived outputs)
  std::size_t total = 0;
};

constexpr std::size_t kWorkspaceAlign = 256;

/// The carve-up for a plan: own_fg: F and G live in the workspace (else the caller's);
/// solve: the iteration arrays (eps tables of K+1 rows; else one row); derived: the
/// scratch of the derived outputs.
struct Plan;
WorkspaceLayout layout_workspace(const Plan& plan, bool own_fg, bool derived);

/// A range of problems launched together.
struct Chunk {
  std::int64_t begin = 0, count = 0;
};

/// The estimate of one iteration (f- and g-update) against the device's limits.
struct Roofline {
  double exps = 0;      ///< exponentials per iteration
  double fp32_ops = 0;  ///< fp32 instructions of the cost recomputation and scores
  double bytes = 0;     ///< device-memory bytes read per iteration
  std::string bound;    ///< "exp", "fp32", "memory", "tensor" (or "cpu-exp" on the CPU)
  /// Tensor-core FLOP of the cost tiles (2 per multiply-add, 3 products per pair and
  /// coordinate with 3xTF32) and the rate assumed for them; 0 without tensor cores.
  double tensor_flops = 0, tensor_flops_per_s = 0;
  double seconds = 0;  ///< estimated time of one iteration at the bound
  double exp_per_s = 0, fp32_per_s = 0, bytes_per_s = 0;  ///< the rates assumed
  bool assumed = false;  ///< the rates are published / assumed figures
};

struct Plan {
  Backend backend = Backend::cuda;
  Kernel kernel = Kernel::online;
  Request request;
  std::string device_name;
  bool props_assumed = false;
  int device_count = 1;  ///< devices the problem is spread over: 1 (see the header)
  int dp = 0;            ///< padded point dimension (0 for cost matrices)
  HalfStep f, g;         ///< the f-update (rows n over columns m) and the g-update
  int occupancy = 0;     ///< blocks per SM of the online half-step used for the splits
  /// The online half-steps run on tensor cores (kernels/include/otgpu_kernels/
  /// sinkhorn_mma.h): squared Euclidean with d >= 16, or any point cloud whose SIMT
  /// tile exceeds the shared memory of a block. `precision` is what their cost tile
  /// computes in (fp32 = 3xTF32); without tensor cores it is fp32.
  bool tensor_cores = false;
  Precision precision = Precision::fp32;
  bool occupancy_assumed = false;
  std::size_t small_smem_bytes = 0;  ///< small kernel: dynamic shared memory per block
  std::size_t workspace_bytes = 0;   ///< a solve's workspace with F and G in it
  std::size_t input_bytes = 0;       ///< raw inputs staged from the caller (x, y or C, a, b)
  std::vector<Chunk> chunks;         ///< batch chunks of at most max_batch_per_launch
  int launches_per_iteration = 0;    ///< kernel launches of one iteration (small: 0)
  /// Loop strategy: "in-kernel" (small), "graph" (a check period captured once and
  /// replayed), "conditional-while" (async: the device stops the loop), "plain".
  std::string sync_loop, async_loop;
  Roofline roofline;
  int cpu_threads = 0;         ///< CPU plans
  std::size_t host_bytes = 0;  ///< CPU plans: memory of the reference solver
};

/// The plan of a CUDA solve on `device`. Throws InvalidArgument (sizes, naming the
/// argument and value) and OutOfMemory when device.memory_free is known and the
/// workspace does not fit (the message states bytes needed and free).
Plan make_plan(const Request& request, const DeviceProps& device);

/// The plan of the fp64 CPU reference: threads, exps per iteration, memory.
Plan make_cpu_plan(const Request& request, const CpuProps& cpu);

/// Column splits of a half-step with `row_blocks` row blocks per problem over `B`
/// problems and `col_tiles` column tiles, on a device holding `wave` blocks at once.
/// Minimises the estimated time waves(s) * (ceil(col_tiles / s) + 1), in tile-steps with
/// one of fixed cost per block (each split at least
/// two tiles long, at most 1024 splits), ties broken toward the fullest last wave,
/// then fewer splits. 1 when the row blocks alone fill a wave.
int choose_splits(std::int64_t row_blocks, std::int64_t B, std::int64_t col_tiles,
                  std::int64_t wave);

/// Whether a point-cloud problem that fits the small kernel (one block per problem, the
/// whole loop inside the kernel) should run there rather than on the batched online
/// kernels (every SM busy, a few launches per iteration). The small kernel occupies
/// min(B, SMs) SMs; the online half-steps spread the same 2 B n m pairs over all SMs but
/// pay ~3 us per launch. Estimated from the per-pair issue counts of the compiled kernels
/// (scripts/sass-report): the small kernel is kept unless the online path is estimated
/// at under 0.8 of its time (B = 64, n = m = 512: kept at d = 2, online at d = 32).
bool small_kernel_preferred(std::int64_t B, std::int64_t n, std::int64_t m, int dp,
                            const DeviceProps& device);

/// Estimated issue slots (thread instructions) per (i, j) pair of the online half-step
/// for padded dimension dp and cost: the score, the LSE update, the shared loads and the
/// chunk rescale, as the static SASS counts them (bench/results/sass-*-simt.md).
double online_instructions_per_pair(int dp, CostKind cost);

/// How the device loop cuts iterations [0, max_iter) (the checks are the CPU
/// reference's: after iteration t when check_every > 0, (t+1) % check_every == 0 and
/// t >= K):
///   prefix  [0, t0): plain launches; its last iteration t0 - 1 is the first check;
///   periods [t0 + p ce, t0 + (p+1) ce) for p < periods: each ends with a check and
///           starts right after one (its first f-update is the check's, reused);
///   tail    [t_limit, max_iter), t_limit = t0 + periods ce: fewer than ce iterations,
///           no check.
/// periods == 0 (no check, or none with a whole period after it): the loop is plain.
struct LoopSchedule {
  int t0 = 0;
  int periods = 0;
  int t_limit = 0;
};
LoopSchedule loop_schedule(int scaling_steps, int check_every, int max_iter);

/// How the CUDA driver ran the iteration loop of the last solve on this host thread:
/// "in-kernel" (small kernel), "graph" (a captured check period replayed),
/// "conditional-while" (the device stops the loop), "plain" (launches from the host;
/// ": reason" appended when a graph path was wanted), "" before any solve. A debug
/// field for tests and the bench.
std::string last_loop_strategy();
void set_last_loop_strategy(std::string strategy);

/// The plan as readable lines (what `otgpu plan` prints).
std::string describe(const Plan& plan);

}  // namespace otgpu::planner

// ---- Sharded plans (otgpu/dist.h): rows split over R ranks --------------------------

namespace otgpu::planner {

/// The links a sharded solve communicates over, as assumed figures (no network is
/// measured). Defaults: 8 GPUs per node on NVLink 4 through NVSwitch (H100/H200 SXM:
/// 900 GB/s bidirectional per GPU, 450 GB/s each way) and, between nodes, one 400 Gb/s
/// InfiniBand NDR adapter per GPU (50 GB/s each way); a per-message latency of 10 us
/// on NVLink and 20 us across nodes (NCCL ring start-up and kernel launch, rounded up).
struct Interconnect {
  std::string name = "NVLink 4 (450 GB/s/GPU each way), InfiniBand NDR 400 Gb/s per GPU";
  int ranks_per_node = 8;
  double intra_bytes_per_s = 450e9;
  double inter_bytes_per_s = 50e9;
  double intra_latency_s = 10e-6;
  double inter_latency_s = 20e-6;
};

/// CPU ranks of one machine exchanging through shared memory (MPI's vader/sm): an
/// assumed 10 GB/s per rank and 2 us per message, all ranks on one node.
Interconnect cpu_shared_memory(int ranks);

/// One rank's rows.
struct ShardRows {
  std::int64_t begin = 0, end = 0;
};

/// The plan of a solve whose rows are split over `ranks` ranks (dist::row_range's
/// split): the per-shard plan of the largest shard, the memory per device, and the
/// estimated iteration as the largest shard's compute plus the g-update's merge, two
/// ring allreduces (max, then sum) of the m column partials:
///   bytes sent per rank = 2 (R - 1) / R * 8 * (2 m B + the checks' scalars)
///   (both drivers merge fp64 partials), time = bytes / bw + 2 (R - 1) latency per
///   allreduce (CUDA: one max/sum pair for the B problems of a launch; CPU: a pair and
///   a finite-f flag per problem), with bw and latency those of the slowest link the
///   ring crosses (the inter-node ones when the ranks span more than one node); the
///   checks' allreduces (residuals + status word, cancel flag + status word) amortized
///   over check_every (planner_shards.cpp, Collectives). Compute and
/// communication are not overlapped in this model (the driver does not overlap them).
struct ShardPlan {
  int ranks = 1;
  int nodes = 1;
  std::vector<ShardRows> rows;          ///< per rank
  Plan shard;                           ///< the plan of the largest shard (its n rows)
  Plan whole;                           ///< the plan of the whole problem on one device / rank
  std::size_t bytes_per_rank = 0;       ///< workspace + staged inputs (GPU) or host memory (CPU)
  std::size_t element_bytes = 4;        ///< of the merged column partials
  double comm_bytes_per_iteration = 0;  ///< sent by each rank per iteration
  double compute_seconds = 0;           ///< largest shard's iteration (roofline)
  double comm_seconds = 0;              ///< merge per iteration (+ amortized checks)
  double iteration_seconds = 0;         ///< compute + comm
  double speedup = 0;                   ///< whole.roofline.seconds / iteration_seconds
  Interconnect net;
};

/// Sharded plan on GPUs like `device` (each rank one device) over `net`.
ShardPlan make_sharded_plan(const Request& request, int ranks, const DeviceProps& device,
                            const Interconnect& net);
/// Sharded plan on CPU ranks like `cpu` (each rank `cpu.threads` threads).
ShardPlan make_sharded_cpu_plan(const Request& request, int ranks, const CpuProps& cpu,
                                const Interconnect& net);

/// The sharded plan as readable lines (`otgpu plan --devices N` / `--ranks R`).
std::string describe(const ShardPlan& plan);

}  // namespace otgpu::planner
