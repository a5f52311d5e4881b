// PLACEHOLDER — runner (all_workloads, median_ms, run, format_table, to_json).
#include "bench.h"

namespace otgpu::bench {
std::vector<Workload> all_workloads() {
  std::vector<Workload> w;
  add_roofline_workloads(w);
  add_sinkhorn_workloads(w);
  add_sliced_workloads(w);
  return w;
}
double median_ms(const Context&, const std::function<double()>& f) { return f(); }
std::vector<Row> run(Context&, const std::vector<std::string>&) { return {}; }
std::string format_table(const Context&, const std::vector<Row>&) { return {}; }
nlohmann::json to_json(const Context&, const std::vector<Row>&) { return {}; }
}  // namespace otgpu::bench
