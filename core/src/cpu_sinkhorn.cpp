// PLACEHOLDER — replaced by the CPU reference solver.
#include "cpu_sinkhorn.h"

#include "otgpu/error.h"

namespace otgpu::cpu {

SinkhornResult sinkhorn(const SinkhornProblem&, const SinkhornOptions&,
                        const detail::SinkhornShape&) {
  throw Error("cpu::sinkhorn: not implemented yet");
}
std::vector<double> barycentric_map(const SinkhornProblem&, const SinkhornResult&,
                                    const detail::SinkhornShape&) {
  throw Error("not implemented yet");
}
std::vector<double> gradient_x(const SinkhornProblem&, const SinkhornResult&,
                               const detail::SinkhornShape&) {
  throw Error("not implemented yet");
}
std::vector<std::int64_t> sample_partners(const SinkhornProblem&, const SinkhornResult&,
                                          const detail::SinkhornShape&, std::uint64_t) {
  throw Error("not implemented yet");
}

}  // namespace otgpu::cpu
