// The `otgpu bench` runner: workloads of docs/benchmarks.md registered by name,
// each producing rows that carry their figure next to the roofline that bounds it.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace otgpu::bench {

/// Measured machine limits (W5) and run settings, shared by all workloads.
/// GPU rows compare against the GPU fields, CPU rows against the cpu_* fields.
struct Context {
  bool has_gpu = false;
  std::string device_name;          ///< GPU name ("" without a GPU)
  std::string cpu_name;             ///< CPU model and thread count
  double exp_per_s = 0;             ///< GPU: measured fp32 exp2 throughput (MUFU), 0 if no GPU
  double fma_flop_per_s = 0;        ///< GPU: measured fp32 FMA FLOP/s
  double copy_bytes_per_s = 0;      ///< GPU: measured device copy bandwidth (read + write bytes)
  double cpu_exp_per_s = 0;         ///< CPU: measured fp64 std::exp throughput, all threads
  double cpu_fma_flop_per_s = 0;    ///< CPU: measured fp64 FMA FLOP/s, all threads
  double cpu_copy_bytes_per_s = 0;  ///< CPU: measured memcpy bandwidth (read + write bytes)
  nlohmann::json build;             ///< commit, compiler, CUDA version, architectures, clocks
  int repeats = 3;                  ///< timed runs per row (median reported)
  int warmup = 1;
  std::string suite = "quick";  ///< quick | full
  bool cpu_only = false;        ///< --backend cpu
  bool gpu_only = false;        ///< --backend cuda
};

/// One line of the report.
struct Row {
  std::string workload;   ///< "W1", "W1d", "W2", "W3", "W5"...
  std::string solver;     ///< e.g. "cuda-online", "cpu-reference"
  std::string backend;    ///< cpu | cuda
  nlohmann::json params;  ///< sizes etc. {"n":4096,"d":2}
  double ms = 0;          ///< median time of the unit below
  std::string time_unit;  ///< "ms/iter", "ms/call", ...
  double figure = 0;      ///< throughput figure (exp/s, GB/s, FLOP/s)
  std::string figure_unit;
  double roofline = 0;  ///< the bound the figure is compared with (0: none)
  std::string bound;    ///< "exp", "copy", "fma", "gemm"...
  std::string note;     ///< why far from the roofline, accuracy, etc.
  double ratio() const { return roofline > 0 ? figure / roofline : 0.0; }
};

using WorkloadFn = std::function<void(const Context&, std::vector<Row>&)>;

struct Workload {
  std::string name;  ///< W1, W1d, W2, W3, W4, W5
  std::string description;
  std::vector<std::string> suites;  ///< suites that include it ("quick", "full")
  WorkloadFn run;
};

/// All workloads, in report order. Built explicitly (no static-init registration,
/// which a static library would drop).
std::vector<Workload> all_workloads();

// Registration hooks, one per source file, called by all_workloads().
void add_roofline_workloads(std::vector<Workload>& out);  // roofline.cpp (W5)
void add_sinkhorn_workloads(std::vector<Workload>& out);  // sinkhorn_workloads.cpp (W1, W1d, W2)
void add_sliced_workloads(std::vector<Workload>& out);    // sliced_workloads.cpp (W3)
void add_latency_workloads(std::vector<Workload>& out);   // latency_workloads.cpp (L1)

/// Median of timed runs of fn (milliseconds), after ctx.warmup untimed runs.
double median_ms(const Context& ctx, const std::function<double()>& timed_run_ms);

/// Runs the selected workloads; fills the context's rooflines first (W5).
std::vector<Row> run(Context& ctx, const std::vector<std::string>& only);

/// Readable table and JSON (rows + context + build info).
std::string format_table(const Context& ctx, const std::vector<Row>& rows);
nlohmann::json to_json(const Context& ctx, const std::vector<Row>& rows);

}  // namespace otgpu::bench
