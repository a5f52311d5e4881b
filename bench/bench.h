// The `otgpu bench` runner: the standard workloads of docs/benchmarks.md (W1-W6,
// TTS) registered by name, each producing rows that carry their figure next to the
// measured limit that bounds it.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace otgpu::bench {

/// Measured machine limits (W5) and run settings, shared by all workloads.
/// GPU rows compare against the GPU fields, CPU rows against the cpu_* fields.
struct Context {
  bool has_gpu = false;             ///< GPU rows run (a device is usable and not --backend cpu)
  bool gpu_usable = false;          ///< a CUDA device is usable in this build and machine
  std::string device_name;          ///< GPU name ("" without a GPU)
  std::string cpu_name;             ///< CPU model and thread count
  double exp_per_s = 0;             ///< GPU: measured fp32 exp2 throughput (MUFU), 0 if no GPU
  double fma_flop_per_s = 0;        ///< GPU: measured fp32 FMA FLOP/s
  double copy_bytes_per_s = 0;      ///< GPU: measured device copy bandwidth (read + write bytes)
  double tf32_flop_per_s = 0;       ///< GPU: measured mma.sync TF32 FLOP/s (W5), 0 if not run
  double bf16_flop_per_s = 0;       ///< GPU: measured mma.sync bf16 FLOP/s (W5), 0 if not run
  double cpu_exp_per_s = 0;         ///< CPU: measured fp64 std::exp throughput, all threads
  double cpu_fma_flop_per_s = 0;    ///< CPU: measured fp64 FMA FLOP/s, all threads
  std::string cpu_fma_isa;          ///< CPU: the vector build of that probe (AVX-512, ...)
  double cpu_copy_bytes_per_s = 0;  ///< CPU: measured memcpy bandwidth (read + write bytes)
  /// CPU: pairs (i, j) per second of the reference solver's row sweep with every exp
  /// skipped (score, max, threshold test), all threads: the most pairs per second the
  /// CPU solver can reach, since it evaluates exps only for terms near the row max.
  double cpu_pair_per_s = 0;
  nlohmann::json build;  ///< commit, compiler, CUDA version, architectures, clocks
  int repeats = 3;       ///< timed runs per row (median reported)
  int warmup = 1;
  std::string suite = "quick";  ///< quick | full
  bool cpu_only = false;        ///< --backend cpu
  bool gpu_only = false;        ///< --backend cuda

  /// Why GPU rows did not run: "needs a GPU" or "--backend cpu".
  std::string gpu_skip_reason() const;
};

/// One line of the report.
struct Row {
  std::string workload;   ///< "W1", "W1d", "W2", "W3", "W5", "TTS"
  std::string solver;     ///< e.g. "cuda-online", "cpu-reference"
  std::string backend;    ///< cpu | cuda
  nlohmann::json params;  ///< sizes and options, e.g. {"n":4096,"m":4096,"d":2,"eps":0.01}
  /// "" when the row ran; otherwise why not ("needs a GPU", "--backend cpu").
  std::string skipped;
  double ms = 0;          ///< median time of the unit below (0 for W5 limits)
  std::string time_unit;  ///< "ms/iter", "ms/call", "ms to tol"
  double figure = 0;      ///< throughput counted from the work done (exp/s, pair/s, B/s...)
  std::string figure_unit;
  /// The measured limit the figure is compared with (0: none). W5 rows are the
  /// limits themselves: their figure is the limit and roofline stays 0 (no ratio).
  double roofline = 0;
  std::string bound;               ///< "exp", "copy", "fma", "pair sweep"
  nlohmann::json result;           ///< what the row computed (iterations, converged, sw2...)
  std::vector<std::string> notes;  ///< printed as numbered footnotes under the table

  /// `--peers FILE` (peers.h): the fastest matching peer entry in this row's time unit.
  bool peer_columns = false;  ///< --peers was given: the outputs carry the peer columns
  std::string peer, peer_backend, peer_version;  ///< peer empty: no entry matched
  double peer_ms = 0;                            ///< the peer's time, in time_unit
  /// Our speedup over the best peer: its time over ours (0 without one).
  double speedup() const { return peer_ms > 0 && ms > 0 ? peer_ms / ms : 0.0; }

  double ratio() const { return roofline > 0 && figure > 0 ? figure / roofline : 0.0; }
  /// Time the row would take at its roofline (ms per time unit); 0 without one.
  double bound_ms() const { return roofline > 0 && figure > 0 ? ms * figure / roofline : 0.0; }
};

using WorkloadFn = std::function<void(const Context&, std::vector<Row>&)>;

struct Workload {
  std::string name;  ///< W1, W1d, W2, W3, W5, TTS
  std::string description;
  std::vector<std::string> suites;  ///< suites that include it ("quick", "full"); empty:
                                    ///< defined but not implemented yet
  WorkloadFn run;                   ///< empty when not implemented yet
  bool implemented() const { return static_cast<bool>(run); }
};

/// All workloads, in report order, including the defined but not implemented ones
/// (W4, W6). Built explicitly (no static-init registration, which a static library
/// would drop).
std::vector<Workload> all_workloads();

// Registration hooks, one per source file, called by all_workloads().
void add_roofline_workloads(std::vector<Workload>& out);    // roofline.cpp (W5)
void add_sinkhorn_workloads(std::vector<Workload>& out);    // sinkhorn_workloads.cpp (W1, W1d, W2)
void add_sliced_workloads(std::vector<Workload>& out);      // sliced_workloads.cpp (W3)
void add_assignment_workloads(std::vector<Workload>& out);  // assignment_workloads.cpp (W4)
void add_latency_workloads(std::vector<Workload>& out);     // latency_workloads.cpp (L1)
void add_solution_workloads(std::vector<Workload>& out);    // solution_workloads.cpp (TTS)
void add_coupling_workloads(std::vector<Workload>& out);    // coupling_workloads.cpp (W4e)
void add_dist_workloads(std::vector<Workload>& out);        // dist_workloads.cpp (W6)
void add_mma_workloads(std::vector<Workload>& out);         // mma_workloads.cpp (W1tc)

/// A row for work that did not run here, saying why (ctx.gpu_skip_reason()).
Row skipped_gpu_row(const Context& ctx, std::string workload, std::string solver,
                    nlohmann::json params);

/// Time per iteration from a run of `iters` iterations and a run of one (the
/// difference cancels the per-call setup): (t_iters - t_1) / (iters - 1). When noise
/// makes that difference non-positive (a loaded machine delaying the short run), the
/// long run's mean, t_iters / iters, an upper bound, is returned instead: a bench row
/// never reports a time <= 0.
double per_iteration_ms(double t_iters, double t_1, int iters);

/// Median of timed runs of fn (milliseconds), after ctx.warmup untimed runs.
double median_ms(const Context& ctx, const std::function<double()>& timed_run_ms);

/// Throws InvalidArgument naming the valid workloads when a name in `only` is not
/// one that runs (unknown, or defined but not implemented yet).
void check_workload_names(const std::vector<std::string>& only);

/// Runs the selected workloads; fills the context's rooflines first (W5).
std::vector<Row> run(Context& ctx, const std::vector<std::string>& only);

/// `otgpu bench --list`: every workload, its suites and description.
std::string format_list();
/// Readable table (fits 120 columns, 3-4 significant digits, footnotes under it).
std::string format_table(const Context& ctx, const std::vector<Row>& rows);
/// Every row with its parameters, results and notes, plus the context and build.
nlohmann::json to_json(const Context& ctx, const std::vector<Row>& rows);
/// One line per row, a header first; numbers at full precision.
std::string to_csv(const std::vector<Row>& rows);

}  // namespace otgpu::bench
