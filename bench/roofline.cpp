// PLACEHOLDER — workloads registered by add_roofline_workloads.
#include "bench.h"

namespace otgpu::bench {
void add_roofline_workloads(std::vector<Workload>&) {}
}  // namespace otgpu::bench
