// PLACEHOLDER — workloads registered by add_sinkhorn_workloads.
#include "bench.h"

namespace otgpu::bench {
void add_sinkhorn_workloads(std::vector<Workload>&) {}
}  // namespace otgpu::bench
