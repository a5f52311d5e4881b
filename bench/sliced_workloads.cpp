// PLACEHOLDER — workloads registered by add_sliced_workloads.
#include "bench.h"

namespace otgpu::bench {
void add_sliced_workloads(std::vector<Workload>&) {}
}  // namespace otgpu::bench
